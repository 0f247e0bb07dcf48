"""The outbox's after-commit trigger: a commit that wrote outbox rows schedules the relay task.

The trigger is debounced with a Redis flag: the first commit that wrote
outbox rows sets `RELAY_PENDING_KEY` (SET NX) and sends one `sampledb.relay_outbox`
at once (no coalescing delay: on the hot path a submission's announcement waits for
nothing but that relay); later commits see the flag and send nothing, because that
relay has not started yet and will read their rows. The relay clears the
flag once it holds the relay lock and before it reads the outbox, so every commit after
that point sends a relay again. A burst of commits thus costs a few relays a second,
each sending many rows, instead of one relay per commit.
The flag expires on its own in case its relay is lost; beat's safety net relays
whatever a lost trigger left behind. A broker outage never fails the commit: the
trigger gives up quickly and stays quiet for a moment.
"""

from __future__ import annotations

import logging

from app import clock
from app.config import Settings
from app.dispatch import celery_client, countdown_for, redis_client
from app.task_names import TaskNames

log = logging.getLogger(__name__)

RELAY_PENDING_KEY = "sampledb:outbox-relay-pending"
RELAY_PENDING_TTL_MS = 10_000
RELAY_RETRY_KEY = "sampledb:outbox-relay-retry"
# After the broker failed, triggers skip it for this long instead of each waiting on it.
QUIET_AFTER_FAILURE_SECONDS = 2.0

_quiet_until: dict[str, float] = {}  # by Redis URL


def send_relay(settings: Settings, *, triggered: bool = True, countdown: float | None = None) -> None:
    celery_client(settings.celery_broker, sentinel_master=settings.redis_sentinel_master).send_task(
        TaskNames.RELAY_OUTBOX, kwargs={"triggered": triggered}, retry=False, countdown=countdown
    )


def trigger_relay(settings: Settings) -> None:
    """After a commit that wrote outbox rows: schedule a relay unless one is pending."""
    if clock.monotonic() < _quiet_until.get(settings.redis_url, 0.0):
        return
    client = redis_client(settings)
    try:
        if client.set(RELAY_PENDING_KEY, "1", nx=True, px=RELAY_PENDING_TTL_MS):
            try:
                send_relay(settings)
            except Exception:
                client.delete(RELAY_PENDING_KEY)
                raise
    except Exception:
        _quiet_until[settings.redis_url] = clock.monotonic() + QUIET_AFTER_FAILURE_SECONDS
        raise


def schedule_relay_retry(settings: Settings, countdown: float) -> None:
    """A relay when failed rows are due again, so recovery does not wait for beat; one at a time."""
    countdown = countdown_for(settings.celery_broker, countdown)
    if redis_client(settings).set(RELAY_RETRY_KEY, "1", nx=True, px=max(1, int(countdown * 1000))):
        send_relay(settings, triggered=False, countdown=countdown)


def relay_started(settings: Settings) -> None:
    """The relay holds the lock and is about to read the outbox: later commits must trigger anew."""
    try:
        redis_client(settings).delete(RELAY_PENDING_KEY)
    except Exception:  # the flag expires on its own; until then beat relays
        log.warning("could not clear the relay-pending flag", exc_info=True)
