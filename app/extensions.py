"""What a running app holds: its settings and its database engine, and the session every part uses.

Each Flask app gets an engine of its own, made from its settings by `init_app` and kept in
the app: a second app on another database never changes the engine of the first. The one
session handle (`db.session`, one session per thread) binds to the current app's engine.
"""

from __future__ import annotations

import weakref

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import Flask, current_app, g

from app import clock
from app.config import Settings

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
        engine = sa.create_engine(
            settings.database_url,
            pool_size=10,
            max_overflow=20,
            pool_recycle=POOL_RECYCLE_SECONDS,
            connect_args=connect_arguments(settings, workers=app.config[WORKERS_KEY]),
        )
        app.extensions[_ENGINE_KEY] = engine
        self._engines.add(engine)
        app.teardown_appcontext(self._end_of_context)
        # The service's time is the database's (app.clock); the latest app's database tells it.
        clock.follow(DatabaseClock(settings.database_url, connect_arguments(settings, workers=True)))

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
        reader = g.pop("db_reader", None)
        if reader is not None and g.pop("db_reader_owned"):
            reader.close()
        self.registry.remove()

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

    def __init__(self, database_url: str, connect_args: dict):
        self.engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool, connect_args=connect_args)

    def __call__(self) -> int:
        with self.engine.connect() as conn:
            micros = conn.scalar(sa.text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"))
        return int(micros) * 1000


def connect_arguments(settings: Settings, *, workers: bool) -> dict:
    """libpq options of every connection: the statement and lock timeouts of the API or of the workers."""
    statement, lock = (
        (settings.worker_statement_timeout_ms, settings.worker_lock_timeout_ms)
        if workers
        else (settings.api_statement_timeout_ms, settings.api_lock_timeout_ms)
    )
    return {
        "options": f"-c statement_timeout={statement} -c lock_timeout={lock}",
        "connect_timeout": settings.database_connect_timeout_seconds,
    }


db = Database()
