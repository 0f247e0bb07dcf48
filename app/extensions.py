"""The service's shared handles: the database session and the flask-smorest Api."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask_smorest import Api

from app.config import Settings


class Database:
    """One engine per process and a session per thread, removed when the app context ends."""

    def __init__(self) -> None:
        self.engine: sa.Engine | None = None
        self.connect_args: dict = {}
        self.session = so.scoped_session(so.sessionmaker(expire_on_commit=False))

    def init_app(self, app) -> None:
        settings = app.config["SAMPLEDB"]
        url, connect_args = settings.database_url, connect_arguments(settings, workers=app.config["SAMPLEDB_WORKERS"])
        if (self.engine is None or self.engine.url.render_as_string(hide_password=False) != url
                or self.connect_args != connect_args):
            # A connection that fails with a disconnect error makes SQLAlchemy drop the whole pool,
            # so the first request after the database is back opens fresh connections.
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                           connect_args=connect_args)
            self.connect_args = connect_args
            self.session.configure(bind=self.engine)
        app.teardown_appcontext(lambda exc: self.session.remove())

    def dispose(self) -> None:
        """Drop inherited connections; called in each process after a fork."""
        if self.engine is not None:
            self.engine.dispose(close=False)


def connect_arguments(settings: Settings, *, workers: bool) -> dict:
    """libpq options of every connection: the statement and lock timeouts of the API or of the workers."""
    statement, lock = ((settings.worker_statement_timeout_ms, settings.worker_lock_timeout_ms) if workers
                       else (settings.api_statement_timeout_ms, settings.api_lock_timeout_ms))
    return {"options": f"-c statement_timeout={statement} -c lock_timeout={lock}",
            "connect_timeout": settings.database_connect_timeout_seconds}


db = Database()
api = Api()
