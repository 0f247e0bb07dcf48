"""What a running app holds: its settings and its database engine, and the session every part uses.

Each Flask app gets an engine of its own, made from its settings by `init_app` and kept in
the app: a second app on another database never changes the engine of the first. The one
session handle (`db.session`, one session per thread) binds to the current app's engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import weakref

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import Flask, current_app, g

from app import clock
from app.config import Settings

log = logging.getLogger(__name__)

SETTINGS_KEY = "SAMPLEDB"
WORKERS_KEY = "SAMPLEDB_WORKERS"  # True in Celery processes: their database timeouts, not the API's
_ENGINE_KEY = "sampledb.engine"


def settings_of(app: Flask) -> Settings:
    return app.config[SETTINGS_KEY]


def current_settings() -> Settings:
    """The settings of the app whose context is active: the way to read them in a running service."""
    return settings_of(current_app)


class _AppSession(so.Session):
    def get_bind(self, mapper=None, clause=None, **kwargs):
        # A session bound explicitly (a test's outer transaction) keeps that bind.
        return self.bind if self.bind is not None else db.engine


@sa.event.listens_for(_AppSession, "after_begin")
def _remember_connection(session: so.Session, _transaction, connection: sa.Connection) -> None:
    # The connection to drop if the session cannot be closed (Database._end_session). Asking the session for it
    # then would connect, when its transaction began without one (the database was down).
    session.info["connection"] = connection


POOL_RECYCLE_SECONDS = 300


class Database:
    """An engine per app and a session per thread, removed when the app context ends.

    Read-only views use `reader()` instead of the session: a connection in autocommit mode
    (the same pool), so a read is its statements alone, with no BEGIN and ROLLBACK around them.
    """

    def __init__(self) -> None:
        # The session of each thread: `session` is the current thread's, `registry` makes and removes them.
        self.registry = so.scoped_session(so.sessionmaker(class_=_AppSession, expire_on_commit=False))
        self._engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()

    def init_app(self, app: Flask) -> None:
        if _ENGINE_KEY in app.extensions:
            raise RuntimeError("the database of this app is already set up")
        settings = settings_of(app)
        # No pre-ping (a SELECT 1 round trip per checkout): a connection the server dropped fails its
        # request once (503), SQLAlchemy sees the disconnect and invalidates the whole pool, the next
        # checkouts reconnect; pool_recycle replaces idle connections before servers or proxies drop them.
        engine = database_engine(
            settings,
            timeouts_ms=timeouts_ms(settings, workers=app.config[WORKERS_KEY]),
            role="worker" if app.config[WORKERS_KEY] else "api",
            pool_size=10,
            max_overflow=20,
            pool_recycle=POOL_RECYCLE_SECONDS,
        )
        app.extensions[_ENGINE_KEY] = engine
        self._engines.add(engine)
        app.teardown_appcontext(self._end_of_context)
        # The service's time is the database's (app.clock); the latest app's database tells it.
        clock.follow(DatabaseClock(settings))

    @property
    def session(self) -> so.Session:
        """This thread's session (made on first use, removed when the app context ends)."""
        return self.registry()

    def reader(self) -> sa.Connection:
        """This app context's autocommit connection for reads (returned to the pool when the context ends)."""
        if "db_reader" not in g:
            bound = self.registry.session_factory.kw.get("bind")
            if isinstance(bound, sa.Connection):
                # A session bound explicitly (a test's outer transaction): reads see what it wrote.
                g.db_reader, g.db_reader_owned = bound, False
            else:
                g.db_reader = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                g.db_reader_owned = True
        return g.db_reader

    def _end_of_context(self, _exc) -> None:
        # Never raises: the answer is made by now, and an exception out of a teardown reaches the WSGI server,
        # which sends a bare 500 in its place. A connection the database dropped under the request can fail
        # even its return to the pool (the isolation level the reader set is reset on a dead socket).
        reader = g.pop("db_reader", None)
        if g.pop("db_reader_owned", False):
            try:
                reader.close()
            except Exception:
                log.warning("could not return a read connection to the pool; dropping it", exc_info=True)
                with contextlib.suppress(Exception):
                    reader.invalidate()
        self._end_session()

    def _end_session(self) -> None:
        if not self.registry.registry.has():
            return
        connection = self.registry().info.pop("connection", None)
        try:
            self.registry.remove()
        except Exception:
            log.warning("could not close this context's database session; dropping it", exc_info=True)
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.invalidate()  # closed, and its pool slot freed
            self.registry.registry.clear()  # the next request of this thread gets a new session

    @staticmethod
    def engine_of(app: Flask) -> sa.Engine:
        return app.extensions[_ENGINE_KEY]

    @property
    def engine(self) -> sa.Engine:
        """The engine of the app whose context is active."""
        return self.engine_of(current_app)

    def dispose(self) -> None:
        """Drop inherited connections of every engine of this process; called in each process after a fork."""
        for engine in list(self._engines):
            engine.dispose(close=False)


class DatabaseClock:
    """PostgreSQL's clock_timestamp() in nanoseconds since the epoch, on a connection of its own (not the pool:
    a reading must never wait for a pool a burst has emptied)."""

    def __init__(self, settings: Settings):
        self.engine = database_engine(
            settings, timeouts_ms=timeouts_ms(settings, workers=True), role="clock", poolclass=sa.pool.NullPool
        )

    def __call__(self) -> int:
        with self.engine.connect() as conn:
            micros = conn.scalar(sa.text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"))
        return int(micros) * 1000


def timeouts_ms(settings: Settings, *, workers: bool) -> tuple[int, int]:
    """(statement, lock) timeouts of the API's connections or of the workers'."""
    if workers:
        return settings.worker_statement_timeout_ms, settings.worker_lock_timeout_ms
    return settings.api_statement_timeout_ms, settings.api_lock_timeout_ms


# Both timeouts for the transaction only (set_config's `true`): through PgBouncer in transaction mode the next
# transaction may run on another server connection, and this one's settings must not stay behind on it.
_TRANSACTION_TIMEOUTS = "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"


def application_name(role: str) -> str:
    """What pg_stat_activity shows for a connection of this process: the role, the process and its host, so a
    session holding a lock is traced to its host and process (PgBouncer passes it on). At most 63 bytes: the
    host, last, is what PostgreSQL cuts."""
    return f"sampledb-jobs {role} {os.getpid()}@{socket.gethostname()}"[:63]


def database_engine(
    settings: Settings, *, timeouts_ms: tuple[int, int], role: str = "cli", **engine_options
) -> sa.Engine:
    """Every engine of the service: its statement and lock timeouts on every connection, directly or through
    PgBouncer in transaction mode (SAMPLEDB_DATABASE_POOLER=transaction; docs/DEPLOYMENT.md)."""
    statement, lock = timeouts_ms
    connect_args: dict = {"connect_timeout": settings.database_connect_timeout_seconds}
    if not settings.through_transaction_pooler:
        connect_args["options"] = f"-c statement_timeout={statement} -c lock_timeout={lock}"
        return _named(sa.create_engine(settings.database_url, connect_args=connect_args, **engine_options), role)
    # PgBouncer refuses the `options` startup parameter, and before 1.21 cannot follow a server-side prepared
    # statement from one server connection to the next: psycopg prepares none.
    connect_args["prepare_threshold"] = None
    engine = _named(sa.create_engine(settings.database_url, connect_args=connect_args, **engine_options), role)

    @sa.event.listens_for(engine, "begin")
    def _timeouts_of_this_transaction(conn: sa.Connection) -> None:
        dbapi_connection = conn.connection.dbapi_connection
        if dbapi_connection is None or dbapi_connection.autocommit:
            return  # no transaction to scope them to: the role's defaults apply (docs/DEPLOYMENT.md)
        # On the DBAPI cursor: the statement opens the transaction SQLAlchemy is beginning, without re-entering it.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_TRANSACTION_TIMEOUTS, (f"{statement}ms", f"{lock}ms"))
        finally:
            cursor.close()

    return engine


def _named(engine: sa.Engine, role: str) -> sa.Engine:
    @sa.event.listens_for(engine, "do_connect")
    def _application_name(_dialect, _record, _cargs, cparams) -> None:
        # At each connect, not once: a pool process forked from the worker's main process has its own pid.
        cparams["application_name"] = application_name(role)

    return engine


db = Database()
