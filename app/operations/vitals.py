"""The service's vital signs, read cheaply: what the gauges of /metrics and `sampledb-jobs status` show.

Every figure comes from a partial index (index-only counts of the active jobs and of the
unsent outbox rows, the oldest unsent row as the first entry of the unsent index) or from
Redis (LLEN of the Celery queues), so reading them costs in proportion to the active jobs
and the backlog, never to the whole tables. Parked rows are counted through their partial
index; dead submissions are few by nature (each one waits for an operator).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis
import sqlalchemy as sa

from app.clock import now_ms
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
    queue_lengths: dict[str, int] | None  # None: Redis did not answer


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


def read_vitals(engine: sa.Engine, redis_url: str) -> Vitals:
    now = now_ms()
    with engine.connect() as conn:
        row = conn.execute(sa.text(FIGURES)).one()
    return Vitals(
        jobs_active={"enqueued": row.enqueued, "executing": row.executing},
        outbox_backlog=row.backlog,
        outbox_oldest_unsent_age_seconds=0.0 if row.oldest is None else max(0, now - row.oldest) / 1000,
        outbox_parked=row.parked,
        dead_submissions=row.dead,
        queue_lengths=_queue_lengths_or_none(redis_url),
    )


def _queue_lengths_or_none(redis_url: str) -> dict[str, int] | None:
    try:
        return queue_lengths(redis_url)
    except redis.RedisError:  # the database figures still count; the caller reports the missing queues
        return None


_redis_clients: dict[str, redis.Redis] = {}
_redis_lock = threading.Lock()


def queue_lengths(redis_url: str) -> dict[str, int]:
    """Messages waiting in each Celery queue, every priority."""
    with _redis_lock:
        client = _redis_clients.get(redis_url)
        if client is None:
            client = _redis_clients[redis_url] = redis.Redis.from_url(
                redis_url, socket_connect_timeout=2, socket_timeout=2
            )
    pipe = client.pipeline(transaction=False)
    queues = QueueNames.all()
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = pipe.execute()
    per_queue = len(_PRIORITY_SUFFIXES)
    return {queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(queues)}
