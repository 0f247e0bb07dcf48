"""Isolation of the tests that touch the database.

Most tests run inside one outer transaction that is rolled back afterwards: the app's
scoped session is bound to that connection with ``join_transaction_mode="create_savepoint"``,
so a commit of a view, of `make_job` or of the CLI's helpers only releases a savepoint. The
Flask test client runs in the test's thread, so the views see the same session. Tests
whose commits are the point (a real Celery worker, subprocesses, several connections or
threads) are marked `committing` and get the tables truncated after them instead.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import sqlalchemy as sa

from app.extensions import db

RESET_TABLES = [
    "pending_submissions",
    "dead_submissions",
    "outbox",
    "sweep_runs",
    "scheduler_leases",
    "job_history",
    "job_tasks",
    "jobs",
    "api_key_customers",
    "api_keys",
    "analysis_rules",
    "analysis_policy",
    "analysis_workers",
    "users",
    "customers",
]


def keep_default_workers(engine: sa.Engine) -> None:
    """Keep the analysis workers and the policy the migrations made, to restore them after a truncation."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS _default_workers AS TABLE analysis_workers"))
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS _default_policy AS TABLE analysis_policy"))


def truncate(engine: sa.Engine) -> None:
    """Back to a fresh installation: no jobs, keys, customers or rules; the default workers and policy."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(RESET_TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(sa.text("INSERT INTO analysis_workers SELECT * FROM _default_workers"))
        conn.execute(sa.text("INSERT INTO analysis_policy SELECT * FROM _default_policy"))


class RolledBack:
    """The test's connection, inside an outer transaction that is never committed."""

    def __init__(self, database, engine: sa.Engine):
        self.database = database
        self.engine = engine
        self.connection: sa.Connection | None = None

    def __enter__(self) -> RolledBack:
        registry = self.database.registry
        registry.remove()
        self.connection = self.engine.connect()
        self.outer = self.connection.begin()
        self.saved = dict(registry.session_factory.kw)
        registry.configure(bind=self.connection, join_transaction_mode="create_savepoint")
        return self

    def __exit__(self, *exc) -> None:
        registry = self.database.registry
        registry.remove()
        registry.session_factory.kw.clear()
        registry.configure(**self.saved)
        self.outer.rollback()
        self.connection.close()

    @contextmanager
    def begin(self):
        """A savepoint on the test's connection, released at the end (what engine.begin() is elsewhere)."""
        with self.connection.begin_nested():
            yield self.connection


def set_read_only(database_url: str, read_only: bool, *apps) -> None:
    """A failover onto a read-only node, or back: the database's connections are dropped, and the new ones are
    read-only (SQLSTATE 25006 on every write) until it is writable again. The pools of `apps` (in this
    process) are emptied, as their connections are gone."""
    admin = sa.create_engine(database_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    database = admin.url.database
    with admin.connect() as conn:
        setting = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
        # In a transaction of its own (allowed on this simulated node, not a real standby), committed before any
        # session is dropped: a session opened in between (a worker's, PgBouncer's) must get the new setting.
        conn.execute(sa.text(f'BEGIN READ WRITE; ALTER DATABASE "{database}" {setting}; COMMIT'))
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
            ),
            {"d": database},
        )
        # This session too: through PgBouncer it would go back to its pool, opened before the change.
        with contextlib.suppress(sa.exc.OperationalError):
            conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
    admin.dispose()
    for application in apps:
        db.engine_of(application).dispose()
