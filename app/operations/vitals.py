"""The service's vital signs, read cheaply: what the gauges of /metrics and `sampledb-jobs status` show.

Every figure comes from a partial index (index-only counts of the active jobs and of the
unsent outbox rows, the oldest unsent row as the first entry of the unsent index) or from
the Celery broker (LLEN of the queues on Redis, a passive queue declaration on RabbitMQ),
so reading them costs in proportion to the active jobs
and the backlog, never to the whole tables. Parked rows are counted through their partial
index; dead submissions are few by nature (each one waits for an operator).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import amqp.exceptions
import kombu
import kombu.exceptions
import redis
import sqlalchemy as sa

from app.clock import now_ms
from app.config import Settings
from app.dispatch import redis_connection
from app.operations.sweep_runs import periodic_intervals
from app.task_names import QueueNames

# kombu's Redis transport keeps messages of priority 3, 6 and 9 in lists of their own.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass(frozen=True)
class Vitals:
    jobs_active: dict[str, int]
    outbox_backlog: int
    outbox_oldest_unsent_age_seconds: float
    outbox_parked: int
    dead_submissions: int
    queue_lengths: dict[str, int] | None  # None: the Celery broker did not answer
    # Each periodic task beat runs: (its interval, seconds since it last ran, or since beat scheduled it when it
    # never ran); a task beat never scheduled against this database is missing.
    periodic: dict[str, tuple[int, float]] = field(default_factory=dict)


# One round trip for the database figures (index-only counts through the partial indexes of the active
# jobs, the unsent and the parked outbox rows; the oldest unsent row is the first entry of the unsent index).
FIGURES = """
SELECT (SELECT count(*) FROM jobs WHERE state = 'enqueued') AS enqueued,
       (SELECT count(*) FROM jobs WHERE state = 'executing') AS executing,
       (SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL) AS backlog,
       (SELECT created_timestamp FROM outbox WHERE sent_timestamp IS NULL ORDER BY id LIMIT 1) AS oldest,
       (SELECT count(*) FROM outbox WHERE parked_timestamp IS NOT NULL AND sent_timestamp IS NULL) AS parked,
       (SELECT count(*) FROM dead_submissions) AS dead
"""


PERIODIC_SINCE = "SELECT name, coalesce(last_run_timestamp, expected_since_timestamp) AS since FROM sweep_runs"


def read_vitals(engine: sa.Engine, settings: Settings) -> Vitals:
    now = now_ms()
    with engine.connect() as conn:
        row = conn.execute(sa.text(FIGURES)).one()
        since: dict[str, int] = {name: at for name, at in conn.execute(sa.text(PERIODIC_SINCE)) if at is not None}
    return Vitals(
        jobs_active={"enqueued": row.enqueued, "executing": row.executing},
        outbox_backlog=row.backlog,
        outbox_oldest_unsent_age_seconds=0.0 if row.oldest is None else max(0, now - row.oldest) / 1000,
        outbox_parked=row.parked,
        dead_submissions=row.dead,
        queue_lengths=_queue_lengths_or_none(settings),
        periodic={
            name: (interval, max(0, now - since[name]) / 1000)
            for name, interval in periodic_intervals(settings).items()
            if name in since
        },
    )


BROKER_ERRORS = (redis.RedisError, kombu.exceptions.OperationalError, amqp.exceptions.AMQPError, OSError)


def _queue_lengths_or_none(settings: Settings) -> dict[str, int] | None:
    try:
        return queue_lengths(settings)
    except BROKER_ERRORS:  # the database figures still count; the caller reports the missing queues
        return None


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each Celery queue (not those a worker holds unacknowledged)."""
    if settings.broker_is_amqp:
        return _amqp_queue_lengths(settings.celery_broker)
    return _redis_queue_lengths(settings.celery_broker, settings.redis_sentinel_master)


def _amqp_queue_lengths(broker_url: str) -> dict[str, int]:
    # A passive declaration answers a queue's ready messages without creating it; one no worker declared yet
    # holds nothing (RabbitMQ closes the channel on it, so each queue gets a channel of its own).
    lengths = {}
    with kombu.Connection(broker_url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
        for queue in QueueNames.all():
            channel = conn.channel()
            try:
                lengths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except amqp.exceptions.NotFound:
                lengths[queue] = 0
            else:
                channel.close()
    return lengths


_redis_clients: dict[str, redis.Redis] = {}
_redis_lock = threading.Lock()


def _redis_queue_lengths(broker_url: str, sentinel_master: str) -> dict[str, int]:
    """Every priority's list of each queue (kombu's Redis transport)."""
    with _redis_lock:
        client = _redis_clients.get(broker_url)
        if client is None:
            client = _redis_clients[broker_url] = redis_connection(
                broker_url, timeout=2, sentinel_master=sentinel_master
            )
    pipe = client.pipeline(transaction=False)
    queues = QueueNames.all()
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = pipe.execute()
    per_queue = len(_PRIORITY_SUFFIXES)
    return {queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(queues)}
