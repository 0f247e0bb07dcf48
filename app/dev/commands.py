"""The command lines of the service's processes, in one place for the dev stack, the benchmarks and the tests.

The Procfile spells the same options out (it is a file format); a test keeps the two equal.
"""

from __future__ import annotations

import sys
import urllib.request

from celeryconfig import QueueNames

# The API as the Procfile runs it: gunicorn's settings (workers, threads, /metrics) live in app.gunicorn_config.
GUNICORN_OPTIONS = ["-c", "python:app.gunicorn_config"]
CELERY_APP = "workers.celery_app"
WORKER_CONCURRENCY = 2  # pool processes of a worker on one machine (the Procfile's worker takes one a core)


def gunicorn(target: str, bind: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", *GUNICORN_OPTIONS, "--bind", bind, *options, target]


def celery(*arguments: str, app: str = CELERY_APP) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, *arguments]


def celery_worker(*options: str, queues: list[str] | None = None, app: str = CELERY_APP) -> list[str]:
    """A Celery worker consuming every queue of the service (or `queues`)."""
    return celery(
        "worker", "-Q", ",".join(queues or QueueNames.all()), "-c", str(WORKER_CONCURRENCY), *options, app=app
    )


# Flower keeps every task it saw in memory, 100,000 by default (~1.5 kB each, and its RSS grew with every
# demo run): the last 10,000 are plenty to inspect, and bound its memory (README, "Flower").
FLOWER_OPTIONS = ["--max_tasks=10000"]


def flower(*options: str) -> list[str]:
    """Flower as the Procfile runs it (its memory bounded), with `options` (port, address, basic auth)."""
    return celery("flower", *FLOWER_OPTIONS, *options)


def answers(url: str, headers: dict[str, str] | None = None) -> bool:
    """`url` answers 200 right now (to a GET with `headers`)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
