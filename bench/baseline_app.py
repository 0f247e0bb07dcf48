"""Bench-only WSGI app (B1's baseline): the service's own app plus one route that answers a fixed,
job-sized JSON in the envelope without touching the database or checking a key.

`BENCH_FIXED_JOB_FILE` names a file holding the `data` of a real GET /job/{id} answer, so the
baseline serializes exactly as much JSON per request as the measured route.

    served by gunicorn with the API's options (app.dev.commands.gunicorn('bench.baseline_app:app', ...))
"""

from __future__ import annotations

import json
import os

from app.api.envelope import envelope
from app.factory import create_app
from bench.api_load import FIXED_JOB_PATH

app = create_app()

with open(os.environ["BENCH_FIXED_JOB_FILE"], encoding="utf-8") as f:
    FIXED_JOB = json.load(f)


@app.get(FIXED_JOB_PATH)
def fixed_job():
    return envelope(FIXED_JOB)
