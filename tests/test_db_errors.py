"""What a database error means (retry, refused for good, or a bug of ours), decided by SQLSTATE on errors
real PostgreSQL raises, and what the API and the ingest tasks do with each."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from app.errors.database import Outcome, is_transient, outcome_of, refusal_text
from app.extensions import db
from tests.support.api import BASE, check_envelope
from tests.support.database import set_read_only


def _error_of(statement: str, *setup: str, **params) -> sa_exc.DBAPIError:
    with db.engine.connect() as conn:
        for line in setup:
            conn.execute(sa.text(line))
        with pytest.raises(sa_exc.DBAPIError) as raised:
            conn.execute(sa.text(statement), params)
        conn.rollback()
    return raised.value


def test_refusals_are_not_transient(app):
    with app.app_context():
        division = _error_of("SELECT 1 / 0")
        chooser = random.Random(8)  # 1,024 four-byte characters that do not compress: too large an index key
        too_large = _error_of(
            "INSERT INTO customers (short_name, name) VALUES (:name, 'x')",
            name="".join(chr(chooser.randrange(0x10000, 0x10FFFF)) for _ in range(1024)),
        )
        missing = _error_of("INSERT INTO customers (short_name) VALUES ('no-name')")
    assert not is_transient(division) and refusal_text(division).startswith("22012: division by zero")
    # PEP 249 files "program limit exceeded" under OperationalError; it is a refusal all the same.
    assert isinstance(too_large, sa_exc.OperationalError) and too_large.orig.sqlstate == "54000"
    assert not is_transient(too_large)
    assert not is_transient(missing) and missing.orig.sqlstate == "23502"


def test_timeouts_and_an_unreachable_server_are_transient(app, database_url):
    with app.app_context():
        cancelled = _error_of("SELECT pg_sleep(5)", "SET statement_timeout = '50ms'")
        with db.engine.connect() as holder:
            holder.execute(sa.text("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"))
            lock = _error_of("SELECT count(*) FROM customers", "SET lock_timeout = '50ms'")
            holder.rollback()
    assert cancelled.orig.sqlstate == "57014" and is_transient(cancelled)
    assert lock.orig.sqlstate == "55P03" and is_transient(lock)

    away = sa.create_engine(sa.make_url(database_url).set(host="127.0.0.1", port=1), poolclass=sa.pool.NullPool)
    with pytest.raises(sa_exc.OperationalError) as raised:
        away.connect()
    assert is_transient(raised.value)
    assert not is_transient(ValueError("not a database error"))


def test_each_error_has_one_outcome(app):
    with app.app_context():
        read_only = _error_of(
            "INSERT INTO customers (short_name, name) VALUES ('ro', 'ro')", "SET TRANSACTION READ ONLY"
        )
        division = _error_of("SELECT 1 / 0")
        missing = _error_of("INSERT INTO customers (short_name) VALUES ('no-name')")
        ours = _error_of("SELECT no_such_column FROM customers")
    # A failover that left the connections on a read-only node: the same write succeeds once it is writable.
    assert read_only.orig.sqlstate == "25006" and outcome_of(read_only) is Outcome.RETRY
    assert outcome_of(division) is Outcome.REFUSED and outcome_of(missing) is Outcome.REFUSED
    # A statement PostgreSQL cannot run is our bug, not the data's fault: neither retried nor buried.
    assert ours.orig.sqlstate == "42703" and outcome_of(ours) is None
    assert outcome_of(ValueError("a bug of ours")) is None


@pytest.mark.committing
def test_a_database_turned_read_only_answers_503_with_retry_after_and_writes_again_after(
    app, client, make_key, make_job, sql, database_url
):
    """Fault: the database fails over onto a read-only node (SQLSTATE 25006 on every write). A write is a 503 with
    Retry-After, never a 500; reads go on; once it is writable again the same request succeeds."""
    headers = make_key("ANALYZER")
    job_id = make_job()
    set_read_only(database_url, True, app)  # the new connections are the read-only node's
    try:
        response = client.put(f"{BASE}/job/{job_id}", headers=headers, json={"state": "executing"})
        body = check_envelope(response, 503)
        assert response.headers["Retry-After"] == "5" and "retry later" in body["messages"][0]["message"]
        assert check_envelope(client.get(f"{BASE}/job/{job_id}", headers=headers), 200)["data"]["state"] == "enqueued"
    finally:
        set_read_only(database_url, False, app)
    response = client.put(f"{BASE}/job/{job_id}", headers=headers, json={"state": "executing"})
    assert check_envelope(response, 200)["data"]["state"] == "executing"


def test_a_failure_that_is_not_the_databases_propagates_instead_of_burying_the_batch(monkeypatch):
    """A bug of ours in a batched ingest raises (Celery requeues the batch; redelivered messages are ingested
    alone), instead of storing every submission of the batch as refused by PostgreSQL."""
    from workers import tasks

    buried = []
    monkeypatch.setattr(tasks, "_bury", lambda payloads, reason, error, attempts=1: buried.append(reason))
    batch = tasks.ingest_submission  # the task object is the batching task class's instance
    with pytest.raises(KeyError):
        batch._after_failure(KeyError("a bug"), [None], [{"submission": {}}])
    assert buried == []
    refused = sa_exc.DataError("INSERT ...", {}, _Refusal("22001"))
    assert batch._after_failure(refused, [None], [{"submission": {}}]) == [{"dead": 1}]
    assert buried == ["refused"]


class _Refusal(Exception):
    def __init__(self, sqlstate: str):
        super().__init__(f"{sqlstate}: value too long")
        self.sqlstate = sqlstate


@pytest.mark.committing
def test_a_job_locked_by_another_session_is_answered_503_within_the_lock_timeout(settings, make_key, make_job):
    """Fault: a row lock held elsewhere (a stuck transaction, a long migration). The request must not hold its web
    thread longer than SAMPLEDB_API_LOCK_TIMEOUT_MS: 503 with Retry-After within that timeout and a second."""
    import dataclasses
    import time

    from app.factory import create_app

    locked_app = create_app(dataclasses.replace(settings, api_lock_timeout_ms=300))
    client = locked_app.test_client()
    headers = make_key("ANALYZER")
    job_id = make_job()
    holder = db.engine_of(locked_app).connect()
    try:
        holder.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        started = time.monotonic()
        response = client.put(f"{BASE}/job/{job_id}", headers=headers, json={"state": "executing"})
        elapsed = time.monotonic() - started
        check_envelope(response, 503)
        assert response.headers["Retry-After"] == "5"
        assert elapsed <= 0.3 + 1.0, elapsed
    finally:
        holder.rollback()
        holder.close()
    response = client.put(f"{BASE}/job/{job_id}", headers=headers, json={"state": "executing"})
    assert check_envelope(response, 200)["data"]["state"] == "executing"
    db.engine_of(locked_app).dispose()


@pytest.mark.committing
def test_a_session_whose_rollback_fails_at_the_end_of_a_request_still_answers_and_frees_its_connection(
    settings, make_key
):
    """Fault: the database drops the connection of a request's session, and the rollback that ends the request
    fails on the dead socket. That error came out of the request's teardown, past every error handler, and the
    WSGI server answered a bare 500 in place of the answer already made (GET /worker during a PostgreSQL outage,
    seen once in CI). Now the answer stands, the session's connection is dropped and its pool slot freed, and the
    next request gets a new session."""
    from sqlalchemy import event

    from app.factory import create_app

    fresh = create_app(settings)
    fresh.config["TESTING"] = True
    engine = db.engine_of(fresh)
    headers = make_key("ANALYZER")
    armed = [True]

    def fail_once(_connection) -> None:
        if armed[0]:
            armed[0] = False
            raise sa_exc.OperationalError("ROLLBACK", {}, Exception("server closed the connection unexpectedly"))

    event.listen(engine, "rollback", fail_once)
    try:
        response = fresh.test_client().get(f"{BASE}/worker", headers=headers)
        assert not armed[0], "the rollback that ends the request was not reached"
        assert check_envelope(response, 200)["data"]
        assert engine.pool.checkedout() == 0
        assert check_envelope(fresh.test_client().get(f"{BASE}/worker", headers=headers), 200)["data"]
    finally:
        event.remove(engine, "rollback", fail_once)
        engine.dispose()


@pytest.mark.committing
def test_the_end_of_a_request_whose_database_cannot_be_reached_raises_nothing(settings):
    """Fault: the database is down when a request starts, so its session began a transaction but never got a
    connection. Ending the app context must not try to connect again (in a request, the refusal came out of the
    teardown and gunicorn answered a bare 500: 224 of them in the outage test's 36 s outage)."""
    import dataclasses

    from app.dev.processes import free_port
    from app.factory import create_app

    unreachable = settings.database_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/sampledb"
    down = create_app(dataclasses.replace(settings, database_url=unreachable, database_connect_timeout_seconds=2))
    with down.app_context():
        with pytest.raises(sa_exc.OperationalError):
            db.session.execute(sa.text("SELECT 1"))
        assert db.session.in_transaction()  # begun, without a connection
    db.engine_of(down).dispose()
