"""PgBouncer in transaction mode (SPEC 13.2, docs/DEPLOYMENT.md): with SAMPLEDB_DATABASE_POOLER=transaction the
service connects through it, keeps its timeouts per transaction and leaves nothing behind on a server
connection another client gets next. (`make test-pgbouncer` runs the API and Celery tests through one.)"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import sqlalchemy as sa

from app.extensions import database_engine, timeouts_ms
from tests.support.pgbouncer import start_pgbouncer

pytestmark = pytest.mark.committing


@pytest.fixture(scope="module")
def bouncer(postgres_server_url, servers_dir):
    server = start_pgbouncer(postgres_server_url, servers_dir / "pgbouncer-own")
    yield server
    server.stop()


@pytest.fixture
def through_bouncer(bouncer, settings):
    url = sa.make_url(bouncer.url).set(database=sa.make_url(settings.database_url).database)
    return dataclasses.replace(
        settings, database_url=url.render_as_string(hide_password=False), database_pooler="TRANSACTION"
    )


def test_without_the_pooler_setting_pgbouncer_refuses_the_connection(through_bouncer):
    """The control: the direct way (timeouts as the `options` startup parameter) is refused by PgBouncer."""
    direct = dataclasses.replace(through_bouncer, database_pooler="NONE")
    engine = database_engine(direct, timeouts_ms=timeouts_ms(direct, workers=False), poolclass=sa.pool.NullPool)
    with pytest.raises(sa.exc.OperationalError, match="options"):
        engine.connect().close()


def _timeouts(conn: sa.Connection) -> tuple[int, int]:
    """(statement_timeout, lock_timeout) in force, in milliseconds."""
    rows = conn.execute(
        sa.text("SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout')")
    )
    values = dict(rows.all())
    return int(values["statement_timeout"]), int(values["lock_timeout"])


def test_timeouts_hold_inside_each_transaction_and_stay_behind_on_no_server_connection(through_bouncer):
    engine = database_engine(
        through_bouncer, timeouts_ms=timeouts_ms(through_bouncer, workers=False), pool_size=4, max_overflow=0
    )
    # A client that sets nothing: what any other application sharing the bouncer would see.
    bare = sa.create_engine(
        sa.make_url(through_bouncer.database_url), poolclass=sa.pool.NullPool, connect_args={"prepare_threshold": None}
    )
    try:
        with engine.begin() as conn:
            assert _timeouts(conn) == (through_bouncer.api_statement_timeout_ms, through_bouncer.api_lock_timeout_ms)
        with bare.connect() as conn:  # PgBouncer hands it a server connection the service just used
            assert _timeouts(conn) == (0, 0)
        over = {"s": through_bouncer.api_statement_timeout_ms / 1000 + 1}
        with engine.begin() as conn, pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            conn.execute(sa.text("SELECT pg_sleep(:s)"), over)  # and a statement over the timeout is stopped
    finally:
        engine.dispose()
        bare.dispose()


def test_many_clients_repeating_the_same_statements_through_the_bouncer(through_bouncer, app):
    """psycopg would prepare a statement on its fifth run; through transaction pooling the next transaction may
    land on a server connection that never saw it. With the pooler setting none is prepared: every run works."""
    engine = database_engine(
        through_bouncer, timeouts_ms=timeouts_ms(through_bouncer, workers=True), pool_size=8, max_overflow=0
    )
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            # Each client's own statement text: a statement another client prepared under the same name on a
            # shared server connection would answer for the wrong client, or not be there at all.
            mine = sa.text(f"SELECT {n} AS client, count(*) AS jobs FROM jobs WHERE state = :s")
            for i in range(60):
                with engine.begin() as conn:
                    assert conn.execute(mine, {"s": "enqueued"}).one().client == n
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": n * 1000 + i})
        except BaseException as err:  # noqa: BLE001 - reported below with the others
            errors.append(err)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    engine.dispose()
    assert errors == []


@pytest.mark.parametrize("pooler", ["NONE", "TRANSACTION"])
def test_each_session_names_its_role_process_and_host_directly_and_through_pgbouncer(through_bouncer, settings, pooler):
    """What a DBA reads in pg_stat_activity to trace a session holding a lock to its host and process."""
    import os
    import socket

    chosen = through_bouncer if pooler == "TRANSACTION" else settings
    engine = database_engine(chosen, timeouts_ms=timeouts_ms(chosen, workers=True), role="worker", pool_size=1)
    try:
        with engine.begin() as conn:
            name = conn.scalar(sa.text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
    finally:
        engine.dispose()
    assert name == f"sampledb-jobs worker {os.getpid()}@{socket.gethostname()}"[:63]
