"""The outbox's after-commit trigger: a commit that wrote outbox rows wakes the relay task
(`app.dispatch.wake`, debounced with the Redis flag `RELAY_PENDING_KEY`), at once: on the hot path a
submission's announcement waits for nothing but that relay. The relay clears the flag once it holds the
relay lock and before it reads the outbox. A broker outage never fails the commit.

A relay woken while another one is mid-batch must not lose the rows that woke it: the other one may have
read the outbox before they were committed. It raises the flag `RELAY_AGAIN_KEY` before it tries the relay
lock, and gives up if the lock is held; the holder, when it would end, takes the flag down and runs one more
batch if it was up. Giving up, it clears the wake-up flag its commit raised: the holder reads after that,
so later commits must wake a relay anew (else they would wait for the flag to expire, or for beat).

It used to try again every 50 ms as a Celery retry. Each retry built an exception record that copies every
frame's code positions; a few a second kept the pool process growing (README, "Memory of a long run").
"""

from __future__ import annotations

import logging

from app.config import Settings
from app.dispatch import celery_client, countdown_for, redis_client, wake, woken
from app.task_names import TaskNames

log = logging.getLogger(__name__)

RELAY_PENDING_KEY = "sampledb:outbox-relay-pending"
RELAY_PENDING_TTL_MS = 10_000
RELAY_RETRY_KEY = "sampledb:outbox-relay-retry"
RELAY_AGAIN_KEY = "sampledb:outbox-relay-again"
# Only a relay that died between raising the flag and taking the lock leaves it up; the next relay then runs one
# batch more than it needed.
RELAY_AGAIN_TTL_MS = 60_000


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
    """The relay holds the lock and is about to read the outbox: later commits must trigger anew, and what the
    relays that found the lock busy asked for is in what it reads."""
    woken(settings, RELAY_PENDING_KEY, RELAY_AGAIN_KEY)


def ask_for_another_batch(settings: Settings) -> None:
    """Before a relay tries the lock: a relay that holds it runs one more batch before it ends (the rows that woke
    this one may have been committed after it read the outbox)."""
    try:
        redis_client(settings).set(RELAY_AGAIN_KEY, "1", px=RELAY_AGAIN_TTL_MS)
    except Exception:  # this relay may still take the lock; if not, beat's safety net relays the rows
        log.warning("could not ask the relay for another batch", exc_info=True)


def left_to_holder(settings: Settings) -> None:
    """The relay found the lock busy and left its rows to the holder (asked before it tried): later commits wake
    a relay of their own."""
    woken(settings, RELAY_PENDING_KEY)


def another_batch_asked(settings: Settings) -> bool:
    """Whether a relay found the lock busy since the holder's first batch (the flag is taken down)."""
    try:
        return redis_client(settings).delete(RELAY_AGAIN_KEY) == 1
    except Exception:  # beat's safety net relays what this relay leaves
        log.warning("could not read whether the relay was asked for another batch", exc_info=True)
        return False
