"""Which database errors are worth retrying, decided on errors real PostgreSQL raises."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from app.errors.database import is_transient, refusal_text
from app.extensions import db


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
