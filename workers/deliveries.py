"""How often a task message was delivered, counted where a killed process cannot lose the count.

With acks_late and reject_on_worker_lost, a message whose pool process died (SIGKILL, the
OOM killer, a segfault in a library) goes back to the queue and is delivered again. A
payload that kills its process every time would loop forever, so each delivery INCRements
a Redis counter BEFORE the work starts: the count survives the process. The counter is
per task id and retry number (a Celery retry is a new message of the same task id, and a
database outage retried many times is not a poison payload). It is removed when the task
body ends, whichever way; a counter left behind by a death expires after a day.
"""

from __future__ import annotations

import logging

from app import dispatch
from app.config import Settings

log = logging.getLogger(__name__)

COUNTER_TTL_SECONDS = 86_400


def _key(task_request) -> str:
    return f"sampledb:deliveries:{task_request.id}:{task_request.retries or 0}"


def count(settings: Settings, task_request) -> int:
    """This delivery's number (1 for the first); 1 when Redis cannot count (the work goes ahead)."""
    return count_many(settings, [task_request])[0]


def count_many(settings: Settings, task_requests: list) -> list[int]:
    """count() of each message of a batch, in one round trip to Redis."""
    try:
        pipe = dispatch.redis_client(settings).pipeline(transaction=False)
        for task_request in task_requests:
            pipe.incr(_key(task_request))
            pipe.expire(_key(task_request), COUNTER_TTL_SECONDS)
        return [int(n) for n in pipe.execute()[::2]]
    except Exception:  # the broker just delivered these tasks, so Redis is rarely away; never block the work
        log.warning("could not count the delivery of tasks %s", [r.id for r in task_requests], exc_info=True)
        return [1] * len(task_requests)


def forget(settings: Settings, task_request) -> None:
    forget_many(settings, [task_request])


def forget_many(settings: Settings, task_requests: list) -> None:
    if not task_requests:
        return
    try:
        dispatch.redis_client(settings).delete(*(_key(task_request) for task_request in task_requests))
    except Exception:  # they expire on their own
        log.debug("could not remove the delivery counters of tasks %s", [r.id for r in task_requests], exc_info=True)
