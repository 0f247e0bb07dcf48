"""A real Celery worker, a restartable Kafka-protocol broker and a task sender, for the tests marked `celery`.

One worker subprocess per session (prefork, 2 processes, task events on) against the
session's database, Redis and broker. Tests that go through it commit for real.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.dev import commands
from app.dev.processes import Child
from tests.support.settings import DATABASE_POOLER

ROOT = Path(__file__).resolve().parents[2]
# Seconds after which Redis hands the messages of a SIGKILLed worker to the next one.
WORKER_VISIBILITY_TIMEOUT = 12


def service_env(
    database_url: str, redis_url: str, kafka_url: str, *, broker_url: str | None = None, **settings: str
) -> dict[str, str]:
    """The environment of a service process a test starts (a worker, gunicorn): this process's without its service
    settings, the servers (Celery's broker is the Redis unless `broker_url` names another), and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_", "FLOWER_", "PROMETHEUS_"))}
    env.update(
        SAMPLEDB_DATABASE_URL=database_url,
        SAMPLEDB_DATABASE_POOLER=DATABASE_POOLER,
        SAMPLEDB_REDIS_URL=redis_url,
        SAMPLEDB_CELERY_BROKER_URL=broker_url or redis_url,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_url,
        SAMPLEDB_SITE="OSL",
        PYTHONUNBUFFERED="1",
        **settings,
    )
    return env


class CeleryWorker(Child):
    """`celery -A workers.celery_app worker` on every queue, as a child in its own session."""

    def __init__(self, env: dict, log_path: Path, hostname: str):
        super().__init__("celery worker", log_path)
        self.env, self.hostname = env, hostname

    def start(self, timeout: float = 60) -> CeleryWorker:
        super().start(
            commands.celery_worker("--pool", "prefork", "-E", "-l", "info", "-n", self.hostname), env=self.env, cwd=ROOT
        )
        self.wait_until(lambda left: " ready." in self.output(), timeout, "ready")
        return self


# The Redis database of a test's own worker: only it takes the tasks sent there.
OWN_WORKER_REDIS_DB = 11


def start_own_worker(
    database_url: str, redis_url: str, kafka_url: str, log_dir: Path, name: str, **settings: str
) -> tuple[CeleryWorker, TaskSender]:
    """A worker of the test's own, beside the session's: Celery's broker is a Redis database of its own (emptied
    first), so only it takes what the returned sender sends; `settings` are its environment's (SAMPLEDB_*)."""
    import uuid

    import redis

    from app.dev.processes import free_port

    own_redis = redis_url.rsplit("/", 1)[0] + f"/{OWN_WORKER_REDIS_DB}"
    redis.Redis.from_url(own_redis).flushdb()
    env = service_env(database_url, own_redis, kafka_url, SAMPLEDB_WORKER_METRICS_PORT=str(free_port()), **settings)
    worker = CeleryWorker(env, log_dir / "worker.log", f"sampledb-{name}-{uuid.uuid4().hex[:6]}@%h").start()
    return worker, TaskSender(own_redis)


class KafkaBroker:
    """An embedded Tansu the tests can stop and start again on the same port (its records are in
    memory: a restart loses them), or the broker SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS names (fixed)."""

    def __init__(self, given: str | None):
        self.server = None
        self.port = None
        self.given = given
        if not given:
            self.start()

    @property
    def url(self) -> str:
        return self.given or f"127.0.0.1:{self.port}"

    @property
    def restartable(self) -> bool:
        return not self.given

    def start(self) -> None:
        from app.dev.kafka import start_kafka

        self.server = start_kafka(port=self.port)
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def crash(self) -> None:
        """SIGKILL the broker: an outage from one moment to the next (on SIGTERM Tansu keeps serving
        its open connections for a few seconds)."""
        self.server.kill()
        self.stop()


class TaskSender:
    """Sends tasks by name to the worker's broker, as the sample service and beat do."""

    def __init__(self, broker_url: str):
        from app.dispatch import celery_client

        self.client = celery_client(broker_url)

    def send(self, name: str, *args, **kwargs):
        return self.client.send_task(name, args=list(args), kwargs=kwargs)

    def send_many(self, name: str, arg_lists) -> None:
        with self.client.producer_or_acquire() as producer:
            for args in arg_lists:
                self.client.send_task(name, args=list(args), producer=producer)
