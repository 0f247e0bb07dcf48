"""The REST intake's wake-up: a commit of pending submissions wakes `sampledb.ingest_pending` on the
ingest queue (`app.dispatch.wake`, debounced with the Redis flag `INGEST_PENDING_KEY`), so a burst of
REST submissions costs a few Celery messages, not one each (SPEC 13.3). The woken task holds the flag while
it drains and clears it before its last claim; beat runs the same task as the safety net of a wake-up that was lost.
"""

from __future__ import annotations

from app.config import Settings
from app.dispatch import celery_client, wake, woken
from app.task_names import QueueNames, TaskNames

INGEST_PENDING_KEY = "sampledb:ingest-pending"
# Above the woken drain's budget (workers.tasks.PENDING_BUDGET_SECONDS): the flag outlives the drain that holds it.
INGEST_PENDING_TTL_MS = 30_000


def trigger_ingest(settings: Settings) -> None:
    """After a commit of pending submissions: wake a worker unless one is woken already."""
    wake(settings, INGEST_PENDING_KEY, INGEST_PENDING_TTL_MS, lambda: send_drain(settings))


def drain_ending(settings: Settings) -> None:
    """The drain that holds the flag is about to claim for the last time: later commits must wake one anew."""
    woken(settings, INGEST_PENDING_KEY)


def send_drain(settings: Settings, *, helper: bool = False) -> None:
    """One `sampledb.ingest_pending` on the ingest queue, whatever the flag says: the drain that holds the
    flag, or a `helper` for a backlog."""
    celery_client(settings.celery_broker, sentinel_master=settings.redis_sentinel_master).send_task(
        TaskNames.INGEST_PENDING, kwargs={"triggered": True, "helper": helper}, queue=QueueNames.INGEST, retry=False
    )
