"""How gunicorn serves the API, in one place: `gunicorn -c python:app.gunicorn_config wsgi:app`.

Used by the Procfile, `sampledb-jobs dev`, the benchmarks and the tests, so all of them serve
the API the same way; /metrics sums every worker.

Prometheus' multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set before a worker starts
and emptied when the server starts (files of an earlier run would be summed in); when
the environment names no directory, the server makes one of its own and removes it at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from app.operations.metrics import MULTIPROC_ENV, mark_process_dead

workers = 2
worker_class = "gthread"
threads = 4
# A GET query may carry list criteria of up to 10,000 values (SPEC §5.4): request lines up to
# gunicorn's 1 MiB cap (the size bodies are allowed) instead of its 4 KiB default, which answers
# a longer URL with an HTML 414 outside the envelope.
limit_request_line = 0

_own_directory = MULTIPROC_ENV not in os.environ
if _own_directory:
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="sampledb-web-metrics-")


def on_starting(server) -> None:
    directory = Path(os.environ[MULTIPROC_ENV])
    if directory.is_dir():
        for leftover in directory.glob("*.db"):
            leftover.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker) -> None:
    mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _own_directory:
        shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
