"""Sending tasks from outside a task (the REST intake, the outbox trigger), by their stable names, and the
one way the service reaches its Redis.

Used by the web app as well as the Celery workers, so it imports no task code (nothing of
`workers/`): tasks are sent by their names (app.task_names) to the Celery broker of the caller's
settings (RabbitMQ or Redis; one Celery client per broker URL and process, routes and serialisation
from celeryconfig, loaded when the first client is made). Redis keeps the service's own flags and
counters whichever broker Celery uses; `redis_connection` opens it from a redis://, rediss://,
unix:// or sentinel:// URL.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel
from celery import Celery

from app import clock
from app.config import AMQP_SCHEMES, Settings
from app.task_names import TaskNames

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.5
# After the broker or Redis failed, wake-ups skip them for this long instead of each waiting on them.
QUIET_AFTER_FAILURE_SECONDS = 2.0

_lock = threading.Lock()
_celery_clients: dict[tuple[int, str, str | None], object] = {}
_redis_clients: dict[tuple[int, str], redis.Redis] = {}
_quiet_until: dict[str, float] = {}  # by Redis URL


class BrokerUnavailable(RuntimeError):
    """The task could not be handed to the broker."""


def celery_client(broker_url: str, *, sentinel_master: str | None = None):
    """A Celery app that only sends tasks, configured from celeryconfig, for this broker URL (and the master a
    sentinel:// URL names)."""
    key = (os.getpid(), broker_url, sentinel_master)
    with _lock:
        client = _celery_clients.get(key)
        if client is None:
            client = Celery("sampledb-dispatch", set_as_current=False)
            client.config_from_object("celeryconfig")
            import celeryconfig  # loaded by the line above; its options for this URL's kind of broker

            client.conf.update(broker_url=broker_url, **celeryconfig.broker_options(broker_url, sentinel_master))
            _celery_clients[key] = client
        return client


def countdown_for(broker_url: str, seconds: float) -> float:
    """A task's countdown as the broker can keep it: RabbitMQ's delayed delivery (quorum queues) counts whole
    seconds and refuses less than one, so a shorter wait becomes one second there."""
    if broker_url.startswith(AMQP_SCHEMES):
        return float(max(1, math.ceil(seconds)))
    return seconds


def redis_connection(url: str, *, timeout: float, sentinel_master: str = "mymaster") -> redis.Redis:
    """A Redis client for a redis://, rediss:// or unix:// URL, or for the master that the sentinels of a
    sentinel:// URL name (kombu's form: `sentinel://[:password@]host:port[;sentinel://host:port...]/db`)."""
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    parts = [urlsplit(part) for part in url.split(";") if part.strip()]
    password = next((unquote(p.password) for p in parts if p.password), None)
    path = next((p.path.strip("/") for p in reversed(parts) if p.path.strip("/")), "")
    sentinels = [(p.hostname or "127.0.0.1", p.port or 26379) for p in parts]
    sentinel = redis.sentinel.Sentinel(
        sentinels, socket_timeout=timeout, socket_connect_timeout=timeout, sentinel_kwargs={"password": password}
    )
    return sentinel.master_for(
        sentinel_master,
        db=int(path) if path.isdigit() else 0,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def redis_client(settings: Settings) -> redis.Redis:
    """This process's client of the service's Redis (flags, delivery counters): short timeouts, never a hang."""
    key = (os.getpid(), settings.redis_url)
    with _lock:
        client = _redis_clients.get(key)
        if client is None:
            client = redis_connection(
                settings.redis_url, timeout=REDIS_TIMEOUT_SECONDS, sentinel_master=settings.redis_sentinel_master
            )
            _redis_clients[key] = client
        return client


def send_ingest(settings: Settings, payload: dict) -> None:
    """Hand one submission payload to `sampledb.ingest_submission`, as the upstream sample service does (the
    REST intake sends none: SPEC 13.3); BrokerUnavailable if the broker refuses."""
    try:
        # argsrepr: what Flower and the task events show of the argument. The submission's id says which
        # it is; a rendering of the whole payload (Celery's default) costs the sender about a sixth of the
        # send and repeats the customer's metadata in every event.
        submission = payload.get("submission") if isinstance(payload, dict) else None
        celery_client(settings.celery_broker, sentinel_master=settings.redis_sentinel_master).send_task(
            TaskNames.INGEST_SUBMISSION,
            args=[payload],
            retry=True,
            argsrepr=f"[submission {submission.get('id')}]" if isinstance(submission, dict) else None,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception as err:
        raise BrokerUnavailable(f"the submission queue is unavailable: {type(err).__name__}") from err


# -- wake-ups: one task message per burst of commits ---------------------------------------------


def wake(settings: Settings, flag: str, ttl_ms: int, send: Callable[[], None]) -> None:
    """`send()` the task that works through what a commit left (the outbox, the pending submissions) unless one
    is pending under `flag`: the first caller sets the flag (SET NX) and sends at once; later callers send
    nothing, because that task has not read yet and will see their rows. The task clears the flag
    (`woken`) before its last read, so every commit after that point wakes it again. A burst of commits thus costs
    a few messages a second instead of one per commit. The flag expires after `ttl_ms` in case its message
    is lost; beat's safety nets do what a lost wake-up left. A broker or Redis that fails raises, and
    wake-ups skip them quietly for QUIET_AFTER_FAILURE_SECONDS."""
    if clock.monotonic() < _quiet_until.get(settings.redis_url, 0.0):
        return
    client = redis_client(settings)
    try:
        if client.set(flag, "1", nx=True, px=ttl_ms):
            try:
                send()
            except Exception:
                client.delete(flag)
                raise
    except Exception:
        _quiet_until[settings.redis_url] = clock.monotonic() + QUIET_AFTER_FAILURE_SECONDS
        raise


def woken(settings: Settings, *flags: str) -> None:
    """The task `wake` sent under each of `flags` is about to read: later commits must wake it anew."""
    try:
        redis_client(settings).delete(*flags)
    except Exception:  # the flag expires on its own; until then beat's safety net does the work
        log.warning("could not clear the wake-up flags %s", ", ".join(flags), exc_info=True)
