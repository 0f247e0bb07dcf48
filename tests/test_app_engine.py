"""Each app has its own engine: a second app on another database never moves the first one's."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.extensions import current_settings, db
from app.factory import create_app


def _app_on(database: str):
    return create_app(Settings.from_env({"SAMPLEDB_DATABASE_URL": f"postgresql://sampledb@127.0.0.1:1/{database}"}))


def test_a_second_app_does_not_change_the_engine_of_the_first():
    first = _app_on("first")
    second = _app_on("second")
    try:
        assert db.engine_of(first).url.database == "first"
        assert db.engine_of(second).url.database == "second"
        for app, name in ((first, "first"), (second, "second"), (first, "first")):
            with app.app_context():
                assert db.engine.url.database == name
                assert db.session.get_bind() is db.engine_of(app)
                assert current_settings() is app.config["SAMPLEDB"]
    finally:
        db.engine_of(first).dispose()
        db.engine_of(second).dispose()


def test_an_app_gets_its_database_once():
    app = _app_on("once")
    try:
        with pytest.raises(RuntimeError, match="already set up"):
            db.init_app(app)
        assert db.engine_of(app).url.database == "once"
    finally:
        db.engine_of(app).dispose()


def test_no_engine_outside_an_app():
    with pytest.raises(RuntimeError):
        db.engine  # noqa: B018 - reading it is the test
