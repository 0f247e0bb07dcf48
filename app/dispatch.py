"""Sending tasks from outside a task: the REST intake and the outbox's after-commit trigger.

Used by the web app as well as the Celery workers, so it imports no task code (nothing of
`workers/`): tasks are sent by their stable names (app.task_names) to the broker of the
Flask app's settings (one Celery client per Redis URL and process, routes and
serialisation from celeryconfig, loaded when the first client is made).

The after-commit trigger is debounced with a Redis flag: the first commit that wrote
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
import os
import threading
import time

import redis
from celery import Celery
from flask import has_app_context

from app.extensions import current_settings
from app.task_names import TaskNames

log = logging.getLogger(__name__)

RELAY_PENDING_KEY = "sampledb:outbox-relay-pending"
RELAY_PENDING_TTL_MS = 10_000
RELAY_RETRY_KEY = "sampledb:outbox-relay-retry"
# After the broker failed, triggers skip it for this long instead of each waiting on it.
QUIET_AFTER_FAILURE_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 0.5

_lock = threading.Lock()
_celery_clients: dict[tuple[int, str], object] = {}
_redis_clients: dict[tuple[int, str], redis.Redis] = {}
_quiet_until: dict[str, float] = {}  # by Redis URL


class BrokerUnavailable(RuntimeError):
    """The task could not be handed to the broker."""


def celery_client(redis_url: str):
    """A Celery app that only sends tasks, configured from celeryconfig, for this broker URL."""
    key = (os.getpid(), redis_url)
    with _lock:
        client = _celery_clients.get(key)
        if client is None:
            client = Celery("sampledb-dispatch", set_as_current=False)
            client.config_from_object("celeryconfig")
            client.conf.broker_url = redis_url
            _celery_clients[key] = client
        return client


def redis_client(redis_url: str) -> redis.Redis:
    key = (os.getpid(), redis_url)
    with _lock:
        client = _redis_clients.get(key)
        if client is None:
            client = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                          socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
            _redis_clients[key] = client
        return client


def send_ingest(redis_url: str, payload: dict) -> None:
    """Hand one submission payload to `sampledb.ingest_submission`; BrokerUnavailable if Redis refuses."""
    try:
        # argsrepr: what Flower and the task events show of the argument. The submission's id says which
        # it is; a rendering of the whole payload (Celery's default) costs the sender about a sixth of the
        # send and repeats the customer's metadata in every event.
        submission = payload.get("submission") if isinstance(payload, dict) else None
        celery_client(redis_url).send_task(
            TaskNames.INGEST_SUBMISSION, args=[payload], retry=True,
            argsrepr=f"[submission {submission.get('id')}]" if isinstance(submission, dict) else None,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception as err:
        raise BrokerUnavailable(f"the submission queue is unavailable: {type(err).__name__}") from err


def send_relay(redis_url: str, *, triggered: bool = True, countdown: float | None = None) -> None:
    celery_client(redis_url).send_task(TaskNames.RELAY_OUTBOX, kwargs={"triggered": triggered}, retry=False,
                                       countdown=countdown)


def trigger_relay() -> None:
    """After-commit trigger (app.outbox.store.on_commit_trigger): schedule a relay unless one is pending."""
    if not has_app_context():
        return
    redis_url = current_settings().redis_url
    if time.monotonic() < _quiet_until.get(redis_url, 0.0):
        return
    client = redis_client(redis_url)
    try:
        if client.set(RELAY_PENDING_KEY, "1", nx=True, px=RELAY_PENDING_TTL_MS):
            try:
                send_relay(redis_url)
            except Exception:
                client.delete(RELAY_PENDING_KEY)
                raise
    except Exception:
        _quiet_until[redis_url] = time.monotonic() + QUIET_AFTER_FAILURE_SECONDS
        raise


def schedule_relay_retry(redis_url: str, countdown: float) -> None:
    """A relay when failed rows are due again, so recovery does not wait for beat; one at a time."""
    if redis_client(redis_url).set(RELAY_RETRY_KEY, "1", nx=True, px=max(1, int(countdown * 1000))):
        send_relay(redis_url, triggered=False, countdown=countdown)


def relay_started(redis_url: str) -> None:
    """The relay holds the lock and is about to read the outbox: later commits must trigger anew."""
    try:
        redis_client(redis_url).delete(RELAY_PENDING_KEY)
    except Exception:  # the flag expires on its own; until then beat relays
        log.warning("could not clear the relay-pending flag", exc_info=True)
