"""Sending tasks from outside a task (the REST intake, the outbox trigger), by their stable names.

Used by the web app as well as the Celery workers, so it imports no task code (nothing of
`workers/`): tasks are sent by their names (app.task_names) to the broker of the caller's
settings (one Celery client per broker URL and process, routes and serialisation from
celeryconfig, loaded when the first client is made).
"""

from __future__ import annotations

import os
import threading

import redis
from celery import Celery

from app.task_names import TaskNames

REDIS_TIMEOUT_SECONDS = 0.5

_lock = threading.Lock()
_celery_clients: dict[tuple[int, str], object] = {}
_redis_clients: dict[tuple[int, str], redis.Redis] = {}


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
            client = redis.Redis.from_url(
                redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
            )
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
            TaskNames.INGEST_SUBMISSION,
            args=[payload],
            retry=True,
            argsrepr=f"[submission {submission.get('id')}]" if isinstance(submission, dict) else None,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception as err:
        raise BrokerUnavailable(f"the submission queue is unavailable: {type(err).__name__}") from err
