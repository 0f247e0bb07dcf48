"""Celery settings, read by `workers.celery_app` (and by the web app's task dispatcher, app.dispatch).

Redis is the broker unless SAMPLEDB_CELERY_BROKER_URL names a RabbitMQ (amqp://); there is no
result backend (nothing reads task results: the database and Kafka are the outcome). Every
task is idempotent, so messages are acknowledged late and re-queued when a worker process dies. Queue and task names
live in app.task_names, in one place, for the worker, beat, the dispatcher and the tests.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from app.config import AMQP_SCHEMES, Settings
from app.task_names import QueueNames, TaskNames

_settings = Settings.from_env()

# Redis: a message a worker took but never acknowledged (the worker was SIGKILLed, the machine
# died) goes back to its queue after this long. It must exceed the longest task and the
# longest retry countdown (60 s), or Redis hands the message to a second worker meanwhile.
# RabbitMQ needs no such timeout: it re-queues a message the moment its consumer's connection is gone.
VISIBILITY_TIMEOUT_SECONDS = _settings.celery_visibility_timeout_seconds

# Redis: the lock a worker holds while it puts abandoned messages back (kombu's unacked_mutex) expires after
# this long, not kombu's 300 s. A worker cut off from Redis in the middle of that pass keeps the lock until it
# expires, and no other worker restores anything meanwhile; one pass takes well under a second.
UNACKED_RESTORE_LOCK_SECONDS = 30

# A worker process takes up to this many ingest messages as one batch (workers.batching).
INGEST_BATCH_SIZE = 100


def broker_options(url: str, sentinel_master: str | None = None) -> dict:
    """The settings that depend on the kind of broker at `url`: the worker's and every sender's (app.dispatch
    applies them to the URL it sends to, whatever this process's own environment says). `sentinel_master`:
    the master a sentinel:// URL names (default: this process's SAMPLEDB_REDIS_SENTINEL_MASTER)."""
    if url.startswith(AMQP_SCHEMES):
        return {
            # Publisher confirms: send_task returns once RabbitMQ has the message (a 202 or a relay trigger is
            # never a message only the client's socket held).
            "broker_transport_options": {"confirm_publish": True},
            # Durable quorum queues: replicated, and they keep their messages through a broker crash. Celery
            # detects them and sends a countdown (retries, the relay's next attempt) through its native delayed
            # delivery, which routes by topic: hence topic exchanges.
            "task_queues": [
                Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
                for name in QueueNames.all()
            ],
            # With quorum queues a consumer's prefetch is fixed when it starts (per-consumer QoS): the batching
            # strategy cannot raise it later as it does on Redis, so it is a batch per pool process from the start.
            # RabbitMQ re-queues whatever a dead worker held at once.
            "worker_prefetch_multiplier": INGEST_BATCH_SIZE,
        }
    transport: dict[str, object] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        # Look for abandoned messages often enough that a short visibility timeout is honoured.
        "unacked_restore_interval": max(1, min(10, VISIBILITY_TIMEOUT_SECONDS // 4)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": UNACKED_RESTORE_LOCK_SECONDS,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
    }
    if url.startswith("sentinel://"):
        transport["master_name"] = sentinel_master or _settings.redis_sentinel_master
    return {
        "broker_transport_options": transport,
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QueueNames.all()],
        "worker_prefetch_multiplier": 1,
    }


broker_url = _settings.celery_broker
broker_connection_retry_on_startup = True
_broker = broker_options(broker_url)
broker_transport_options = _broker["broker_transport_options"]
task_queues = _broker["task_queues"]
worker_prefetch_multiplier = _broker["worker_prefetch_multiplier"]

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
# A task that outlives its soft limit (the database hung) raises SoftTimeLimitExceeded and is
# retried; one that reaches the hard limit has its pool process killed and its message re-queued,
# never acknowledged: the work is done again, not lost.
task_soft_time_limit = _settings.task_soft_time_limit_seconds
task_time_limit = max(_settings.task_time_limit_seconds, task_soft_time_limit + 1)
task_acks_on_timeout = False

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


# However many beat processes run, only the one holding the scheduler lease sends (workers.scheduler).
beat_scheduler = "workers.scheduler:LeasedScheduler"

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
