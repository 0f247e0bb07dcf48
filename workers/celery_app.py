"""The Celery application: `celery -A workers.celery_app worker | beat | flower`.

Settings come from celeryconfig. Every task runs inside an app context of the Flask
app (`create_app()`), so it uses the same database session, settings and outbox
trigger as the API. The Flask app is made on first use in each process; after the
prefork fork a child drops inherited database connections and makes its own Kafka
producer when it first relays (never before the fork).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from celery import Celery, Task, signals
from flask import Flask

from app.clock import now_ms
from app.config import Settings
from app.extensions import current_settings, db
from app.factory import create_app
from app.operations import sweep_runs
from app.unit_of_work import unit_of_work
from workers import heap, kafka, metrics_port, redis_transport

# kafka-python narrates every connection at INFO; the relay logs what matters.
logging.getLogger("kafka").setLevel(logging.WARNING)

_flask_app: Flask | None = None
_flask_lock = threading.Lock()


def flask_app() -> Flask:
    global _flask_app
    with _flask_lock:
        if _flask_app is None:
            _flask_app = create_app(workers=True)
        return _flask_app


@contextlib.contextmanager
def work_context():
    """Where a pool process runs a task or a batch: the Flask app context (the session is removed when it ends),
    then the memory it freed given back to the system (workers.heap)."""
    try:
        with flask_app().app_context():
            yield
    finally:
        heap.give_back_free_memory()


class FlaskTask(Task):
    """A task that runs in `work_context()`."""

    def __call__(self, *args, **kwargs):
        with work_context():
            return self.run(*args, **kwargs)


# Before the app makes its first broker connection: a message popped from Redis is recorded in the same step.
redis_transport.install()
celery = Celery("sampledb", task_cls=FlaskTask, include=["workers.tasks"])
celery.config_from_object("celeryconfig")


@signals.celeryd_init.connect
def _worker_starting(**_kwargs) -> None:
    metrics_port.prepare(Settings.from_env())


@signals.worker_ready.connect
def _worker_ready(**_kwargs) -> None:
    metrics_port.serve(Settings.from_env())


@signals.worker_shutdown.connect
def _worker_stopped(**_kwargs) -> None:
    metrics_port.remove()


@signals.beat_init.connect
def _beat_starting(**_kwargs) -> None:
    """Mark the periodic tasks as expected from now on, so status sees one that never runs."""
    app = flask_app()
    with app.app_context(), unit_of_work(db.session):
        sweep_runs.expect(db.session, sweep_runs.periodic_intervals(current_settings()), now_ms())


@signals.worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    db.dispose()  # connections opened before the fork belong to the parent
    kafka.forget_inherited()
    flask_app()  # made now, so the first task does not pay for it
    heap.trace_if_asked()


@signals.worker_process_shutdown.connect
def _before_exit(**_kwargs) -> None:
    kafka.close_producer(timeout=10)
    metrics_port.process_ended(os.getpid())
