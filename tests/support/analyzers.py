"""The analyzer tests' parts: the API under gunicorn, analyzers in threads, the execution-timeout sweep."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

from analyzer import Analyzer, Job, Runner
from app.clock import now_ms
from app.dev import commands
from app.dev.processes import Child, free_port
from app.extensions import db
from app.jobs import service
from app.unit_of_work import unit_of_work
from tests.support.settings import DATABASE_POOLER

ROOT = Path(__file__).resolve().parents[2]


def _environment(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_"))}
    env.update(SAMPLEDB_SITE="OSL", PYTHONUNBUFFERED="1", **settings)
    return env


def client_env(api_url: str, api_key: str, kafka_url: str, **extra: str) -> dict:
    """The environment of a client command (`analyzer run`, `demo`) of the service at api_url."""
    return _environment(
        SAMPLEDB_API_URL=api_url, SAMPLEDB_API_KEY=api_key, SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_url, **extra
    )


class ApiServer(Child):
    """The API under gunicorn, as the dev stack and the Procfile run it, on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path, *, database_url: str, redis_url: str, broker_url: str, kafka_url: str):
        super().__init__("api", log_path)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = _environment(
            SAMPLEDB_DATABASE_URL=database_url,
            SAMPLEDB_DATABASE_POOLER=DATABASE_POOLER,
            SAMPLEDB_REDIS_URL=redis_url,
            SAMPLEDB_CELERY_BROKER_URL=broker_url,
            SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_url,
            PYTHONPATH=str(ROOT),
        )

    def start(self, timeout: float = 60) -> ApiServer:
        # An empty working directory: no `.sampledb/dev.env` of a dev stack can leak into its settings.
        super().start(
            commands.gunicorn("app.factory:create_app()", self.url.removeprefix("http://")),
            env=self.env,
            cwd=tempfile.mkdtemp(prefix="sampledb-test-api-"),
        )
        self.wait_until(lambda left: commands.answers(f"{self.url}/sampledb/v2/healthz"), timeout, "answering")
        return self


class Recording(Analyzer):
    """Counts its analyses per task; a held job's analysis runs until released or stopped."""

    def __init__(self, worker: str, hold=lambda job_id: False):
        self.worker = worker
        self.hold = hold
        self.release = threading.Event()
        self.calls: collections.Counter = collections.Counter()
        self.jobs: set[str] = set()
        self.stops: dict[str, str | None] = {}
        self.lock = threading.Lock()

    def analyse(self, job: Job):
        with self.lock:
            self.calls[job.task_id] += 1
            self.jobs.add(job.id)
        if self.hold(job.id):
            while not job.stop.wait(0.05) and not self.release.is_set():
                pass
        if job.stopped():
            with self.lock:
                self.stops[job.task_id] = job.stop_reason
        return None


@contextlib.contextmanager
def running(*runners: Runner, join_timeout: float = 60):
    """Run each analyzer in a thread of its own until the block ends, then stop it cleanly."""
    threads = [
        threading.Thread(target=r.run, name=f"runner-{r.worker}-{i}", daemon=True) for i, r in enumerate(runners)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + join_timeout
        for runner in runners:
            assert runner.joined.wait(max(0.0, deadline - time.monotonic())), (
                f"the analyzer {runner.instance} did not join its consumer group within {join_timeout} s"
            )
        yield runners
    finally:
        for runner in runners:
            runner.stop()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "an analyzer did not stop"


def sweep_execution_timeouts(app, settings, timeout_seconds: int) -> int:
    """The execution-timeout sweep of the beat schedule, run here with a short timeout: the service
    function its Celery task calls, in a unit of work of its own."""
    short = dataclasses.replace(settings, execution_timeout_seconds=timeout_seconds)
    with app.app_context():
        with unit_of_work(db.session) as session:
            moved = service.sweep_execution_timeouts(session, short, now_ms(), short.sweep_batch_size)
        db.registry.remove()
    return moved


def claims_per_task(sql, job_ids: list[str]) -> dict[str, int]:
    """How often each task of these jobs moved from enqueued to executing (a claim), from the job history."""
    rows = sql(
        "SELECT t.id::text, count(h.id) FROM job_tasks t LEFT JOIN job_history h ON h.task_id = t.id "
        "AND h.from_state = 'enqueued' AND h.to_state = 'executing' "
        "WHERE t.job_id = ANY(CAST(:ids AS uuid[])) GROUP BY t.id",
        ids=job_ids,
    )
    return dict(rows)
