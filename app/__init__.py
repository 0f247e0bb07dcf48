"""sampledb-jobs: the analysis-job service of a malware sample database."""

from __future__ import annotations

from flask import Flask

from app.config import Settings


def create_app(settings: Settings | None = None, *, workers: bool = False) -> Flask:
    """The Flask app; `workers=True` for Celery processes (their own database timeouts)."""
    from app.api import register_api
    from app.extensions import db

    app = Flask(__name__)
    app.config["SAMPLEDB"] = settings or Settings.from_env()
    app.config["SAMPLEDB_WORKERS"] = workers
    db.init_app(app)
    register_api(app)
    # A commit that wrote outbox rows schedules the relay task (workers.dispatch imports Celery
    # only when it first sends a task).
    from app import outbox
    from workers.dispatch import trigger_relay

    outbox.on_commit_trigger(trigger_relay)
    return app
