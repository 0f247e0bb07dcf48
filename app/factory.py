"""The Flask app of the service: its settings, its database engine, the HTTP API and the outbox trigger."""

from __future__ import annotations

from flask import Flask, has_app_context

from app.api import register_api
from app.config import Settings
from app.extensions import SETTINGS_KEY, WORKERS_KEY, current_settings, db
from app.outbox import store as outbox
from app.outbox.trigger import trigger_relay


def create_app(settings: Settings | None = None, *, workers: bool = False) -> Flask:
    """The Flask app; `workers=True` for Celery processes (their own database timeouts)."""
    app = Flask("app")
    app.config[SETTINGS_KEY] = settings or Settings.from_env()
    app.config[WORKERS_KEY] = workers
    db.init_app(app)
    register_api(app)
    # A commit that wrote outbox rows schedules the relay task.
    outbox.on_commit_trigger(_trigger_relay_of_current_app)
    return app


def _trigger_relay_of_current_app() -> None:
    """The relay trigger on the broker of the app whose context committed (a shell without one relays by beat)."""
    if has_app_context():
        trigger_relay(current_settings())
