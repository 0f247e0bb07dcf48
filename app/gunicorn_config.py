"""gunicorn settings of the web app (`gunicorn -c python:app.gunicorn_config`): /metrics sums every worker.

Prometheus' multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set before a worker starts
and emptied when the server starts (files of an earlier run would be summed in); when
the environment names no directory, the server makes one of its own and removes it at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from app.metrics import MULTIPROC_ENV, mark_process_dead

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
