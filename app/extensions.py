"""The service's shared handles: the database session and the flask-smorest Api."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask_smorest import Api


class Database:
    """One engine per process and a session per thread, removed when the app context ends."""

    def __init__(self) -> None:
        self.engine: sa.Engine | None = None
        self.session = so.scoped_session(so.sessionmaker(expire_on_commit=False))

    def init_app(self, app) -> None:
        url = app.config["SAMPLEDB"].database_url
        if self.engine is None or str(self.engine.url.render_as_string(hide_password=False)) != url:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self.session.configure(bind=self.engine)
        app.teardown_appcontext(lambda exc: self.session.remove())

    def dispose(self) -> None:
        """Drop inherited connections; called in each process after a fork."""
        if self.engine is not None:
            self.engine.dispose(close=False)


db = Database()
api = Api()
