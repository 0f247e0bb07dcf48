"""Support for the analyzer tests: the API served over HTTP, analyzers in threads, the sweep."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from analyzer import Runner
from app.extensions import db
from app.jobs import service
from app.localstack import free_port
from app.models import now_ms

ROOT = Path(__file__).resolve().parents[1]


def server_env(database_url: str, redis_url: str, kafka_url: str, **extra: str) -> dict:
    """The environment of a service process on the test session's servers (no SAMPLEDB_* of the caller)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_"))}
    env.update(SAMPLEDB_DATABASE_URL=database_url, SAMPLEDB_REDIS_URL=redis_url,
               SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_url, SAMPLEDB_SITE="OSL", PYTHONUNBUFFERED="1", **extra)
    return env


def client_env(api_url: str, api_key: str, kafka_url: str, **extra: str) -> dict:
    """The environment of a client command (analyzer, demo) of the service at api_url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_"))}
    env.update(SAMPLEDB_API_URL=api_url, SAMPLEDB_API_KEY=api_key, SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_url,
               SAMPLEDB_SITE="OSL", PYTHONUNBUFFERED="1", **extra)
    return env


class ApiServer:
    """The API under gunicorn, as `sampledb-jobs dev` runs it, on a free port of 127.0.0.1."""

    def __init__(self, env: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # Its own empty working directory: no `.sampledb/dev.env` of a dev stack can leak in.
        self.cwd = tempfile.mkdtemp(prefix="sampledb-test-api-")
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "8",
                 "--bind", f"127.0.0.1:{self.port}", "app:create_app()"],
                env={**env, "PYTHONPATH": str(ROOT)}, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"gunicorn exited:\n{self.log()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/sampledb/v2/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the API did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@contextlib.contextmanager
def running(*runners: Runner, join_timeout: float = 60):
    """Run each analyzer in a thread of its own until the block ends, then stop it cleanly."""
    threads = [threading.Thread(target=r.run, name=f"runner-{r.worker}-{i}", daemon=True)
               for i, r in enumerate(runners)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + join_timeout
        for runner in runners:
            assert runner.joined.wait(max(0.0, deadline - time.monotonic())), \
                f"the analyzer {runner.instance} did not join its consumer group within {join_timeout} s"
        yield runners
    finally:
        for runner in runners:
            runner.stop()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "an analyzer did not stop"


def sweep_execution_timeouts(app, settings, timeout_seconds: int) -> int:
    """The execution-timeout sweep of the Celery beat schedule, run here with a short timeout:
    the same service function its task calls, in a transaction of its own."""
    short = dataclasses.replace(settings, execution_timeout_seconds=timeout_seconds)
    with app.app_context():
        moved = service.sweep_execution_timeouts(db.session, short, now_ms(), short.sweep_batch_size)
        db.session.commit()
        db.session.remove()
    return moved


def claims_per_task(sql, job_ids: list[str]) -> dict[str, int]:
    """How often each task of these jobs moved from enqueued to executing (a claim), from the job history."""
    rows = sql("SELECT t.id::text, count(h.id) FROM job_tasks t LEFT JOIN job_history h ON h.task_id = t.id "
               "AND h.from_state = 'enqueued' AND h.to_state = 'executing' "
               "WHERE t.job_id = ANY(CAST(:ids AS uuid[])) GROUP BY t.id", ids=job_ids)
    return dict(rows)
