"""Celery settings, read by `workers.celery_app` (and by the web app's task dispatcher, app.dispatch).

Redis is the broker; there is no result backend (nothing reads task results: the
database and Kafka are the outcome). Every task is idempotent, so messages are
acknowledged late and re-queued when a worker process dies. Queue and task names
live in app.task_names, in one place, for the worker, beat, the dispatcher and the tests.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from app.config import Settings
from app.task_names import QueueNames, TaskNames

_settings = Settings.from_env()

# A message a worker took but never acknowledged (the worker was SIGKILLed, the machine
# died) goes back to its queue after this long. It must exceed the longest task and the
# longest retry countdown (60 s), or Redis hands the message to a second worker meanwhile.
VISIBILITY_TIMEOUT_SECONDS = _settings.celery_visibility_timeout_seconds

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    # Look for abandoned messages often enough that a short visibility timeout is honoured.
    "unacked_restore_interval": max(1, min(10, VISIBILITY_TIMEOUT_SECONDS // 4)),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
}

task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]

task_ignore_result = True
result_backend = None

# Idempotent tasks: acknowledge after the work, re-queue when the worker process is lost.
task_acks_late = True
task_reject_on_worker_lost = True
# A task running when the broker connection drops is re-delivered anyway; stop it instead
# of letting it finish twice.
worker_cancel_long_running_tasks_on_connection_loss = True
worker_prefetch_multiplier = 1
# A task that outlives its soft limit (the database hung) raises SoftTimeLimitExceeded and is
# retried; one that reaches the hard limit has its pool process killed and its message re-queued,
# never acknowledged: the work is done again, not lost.
task_soft_time_limit = _settings.task_soft_time_limit_seconds
task_time_limit = max(_settings.task_time_limit_seconds, task_soft_time_limit + 1)
task_acks_on_timeout = False

task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QueueNames.all()]
task_default_queue = QueueNames.INGEST
task_create_missing_queues = False
task_routes = {
    TaskNames.INGEST_SUBMISSION: {"queue": QueueNames.INGEST},
    TaskNames.INGEST_SUBMISSIONS: {"queue": QueueNames.INGEST},
    TaskNames.INGEST_PENDING: {"queue": QueueNames.PERIODIC},
    TaskNames.RELAY_OUTBOX: {"queue": QueueNames.OUTBOX},
    TaskNames.SWEEP_EXECUTION_TIMEOUTS: {"queue": QueueNames.PERIODIC},
    TaskNames.SWEEP_ENQUEUED_TIMEOUTS: {"queue": QueueNames.PERIODIC},
    TaskNames.SWEEP_UNCONFIRMED_ABORTS: {"queue": QueueNames.PERIODIC},
    TaskNames.PURGE: {"queue": QueueNames.PERIODIC},
}

# Flower shows every task: sent, received, started, succeeded, failed.
worker_send_task_events = True
task_send_sent_event = True

timezone = "UTC"
enable_utc = True


def _every(seconds: int, task: str, queue: str, **kwargs) -> dict:
    # A beat entry that waited longer than its interval is stale: the next one does the same work.
    return {
        "task": task,
        "schedule": float(seconds),
        "kwargs": kwargs,
        "options": {"queue": queue, "expires": float(seconds)},
    }


beat_schedule = {
    "relay-outbox": _every(_settings.outbox_relay_interval_seconds, TaskNames.RELAY_OUTBOX, QueueNames.OUTBOX),
    "ingest-pending": _every(_settings.pending_ingest_interval_seconds, TaskNames.INGEST_PENDING, QueueNames.PERIODIC),
    "sweep-execution-timeouts": _every(
        _settings.sweep_interval_seconds, TaskNames.SWEEP_EXECUTION_TIMEOUTS, QueueNames.PERIODIC
    ),
    "sweep-enqueued-timeouts": _every(
        _settings.sweep_interval_seconds, TaskNames.SWEEP_ENQUEUED_TIMEOUTS, QueueNames.PERIODIC
    ),
    "sweep-unconfirmed-aborts": _every(
        _settings.sweep_interval_seconds, TaskNames.SWEEP_UNCONFIRMED_ABORTS, QueueNames.PERIODIC
    ),
    "purge": _every(_settings.purge_interval_seconds, TaskNames.PURGE, QueueNames.PERIODIC),
}
