"""The outbox's after-commit trigger: a commit that wrote outbox rows wakes the relay task
(`app.dispatch.wake`, debounced with the Redis flag `RELAY_PENDING_KEY`), at once: on the hot path a
submission's announcement waits for nothing but that relay. The relay clears the flag once it holds the
relay lock and before it reads the outbox. A broker outage never fails the commit.
"""

from __future__ import annotations

from app.config import Settings
from app.dispatch import celery_client, countdown_for, redis_client, wake, woken
from app.task_names import TaskNames

RELAY_PENDING_KEY = "sampledb:outbox-relay-pending"
RELAY_PENDING_TTL_MS = 10_000
RELAY_RETRY_KEY = "sampledb:outbox-relay-retry"


def send_relay(settings: Settings, *, triggered: bool = True, countdown: float | None = None) -> None:
    celery_client(settings.celery_broker, sentinel_master=settings.redis_sentinel_master).send_task(
        TaskNames.RELAY_OUTBOX, kwargs={"triggered": triggered}, retry=False, countdown=countdown
    )


def trigger_relay(settings: Settings) -> None:
    """After a commit that wrote outbox rows: schedule a relay unless one is pending."""
    wake(settings, RELAY_PENDING_KEY, RELAY_PENDING_TTL_MS, lambda: send_relay(settings))


def schedule_relay_retry(settings: Settings, countdown: float) -> None:
    """A relay when failed rows are due again, so recovery does not wait for beat; one at a time."""
    countdown = countdown_for(settings.celery_broker, countdown)
    if redis_client(settings).set(RELAY_RETRY_KEY, "1", nx=True, px=max(1, int(countdown * 1000))):
        send_relay(settings, triggered=False, countdown=countdown)


def relay_started(settings: Settings) -> None:
    """The relay holds the lock and is about to read the outbox: later commits must trigger anew."""
    woken(settings, RELAY_PENDING_KEY)
