"""The service's shared handles: the database session and the flask-smorest Api."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import g
from flask_smorest import Api


POOL_RECYCLE_SECONDS = 300


class Database:
    """One engine per process and a session per thread, removed when the app context ends.

    Read-only views use `reader()` instead of the session: a connection in autocommit mode
    (the same pool), so a read is its statements alone, with no BEGIN and ROLLBACK around them.
    """

    def __init__(self) -> None:
        self.engine: sa.Engine | None = None
        self.session = so.scoped_session(so.sessionmaker(expire_on_commit=False))

    def init_app(self, app) -> None:
        url = app.config["SAMPLEDB"].database_url
        if self.engine is None or str(self.engine.url.render_as_string(hide_password=False)) != url:
            # No pre-ping (a SELECT 1 round trip per checkout): a connection the server dropped fails its
            # request once, SQLAlchemy sees the disconnect and invalidates the whole pool, the next
            # checkouts reconnect; pool_recycle replaces idle connections before servers or proxies drop them.
            self.engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=POOL_RECYCLE_SECONDS)
            self.session.configure(bind=self.engine)
        app.teardown_appcontext(self._end_of_context)

    def reader(self) -> sa.Connection:
        """This app context's autocommit connection for reads (returned to the pool when the context ends)."""
        if "db_reader" not in g:
            g.db_reader = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return g.db_reader

    def _end_of_context(self, _exc) -> None:
        reader = g.pop("db_reader", None)
        if reader is not None:
            reader.close()
        self.session.remove()

    def dispose(self) -> None:
        """Drop inherited connections; called in each process after a fork."""
        if self.engine is not None:
            self.engine.dispose(close=False)


db = Database()
api = Api()
