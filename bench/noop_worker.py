"""B3's broker baseline: a Celery app with one task that does nothing, configured like the service's
(celeryconfig: its broker, JSON, acks_late, the broker's queue type and prefetch, the worker's Redis transport),
consuming a queue of its own. BENCH_KOMBU_REDIS_TRANSPORT=1: kombu's own Redis transport instead
(bench.redis_transport compares the two).

    celery -A bench.noop_worker worker -Q bench-noop -c 2
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

import celeryconfig
from workers import redis_transport

NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench-noop"


def configuration(broker_url: str) -> dict:
    """celeryconfig's options for this kind of broker, with the no-op queue made like the service's queues."""
    options = celeryconfig.broker_options(broker_url)
    like = options["task_queues"][0]
    options["task_queues"] = [
        Queue(
            NOOP_QUEUE,
            Exchange(NOOP_QUEUE, type=like.exchange.type),
            routing_key=NOOP_QUEUE,
            queue_arguments=like.queue_arguments,
        )
    ]
    return options


def make_app(broker_url: str) -> Celery:
    """The no-op app for this broker (a sender makes one per broker: Celery keeps its connections and queues)."""
    made = Celery("sampledb-bench-noop", set_as_current=False)
    made.config_from_object("celeryconfig")
    made.conf.update(broker_url=broker_url, **configuration(broker_url))
    made.conf.task_default_queue = NOOP_QUEUE
    made.conf.task_routes = {NOOP_TASK: {"queue": NOOP_QUEUE}}
    made.conf.beat_schedule = {}
    return made


if os.environ.get("BENCH_KOMBU_REDIS_TRANSPORT") != "1":
    redis_transport.install()
celery = make_app(celeryconfig.broker_url)


@celery.task(name=NOOP_TASK)
def noop(payload=None) -> None:
    """Nothing: what the broker and Celery cost per task."""
