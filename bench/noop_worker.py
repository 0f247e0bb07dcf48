"""B3's broker baseline: a Celery app with one task that does nothing, configured like the service's
(celeryconfig: Redis broker, JSON, acks_late, prefetch 1), consuming a queue of its own.

    celery -A bench.noop_worker worker -Q bench-noop -c 2
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench-noop"

celery = Celery("sampledb-bench-noop")
celery.config_from_object("celeryconfig")
celery.conf.task_queues = [Queue(NOOP_QUEUE, routing_key=NOOP_QUEUE)]
celery.conf.task_default_queue = NOOP_QUEUE
celery.conf.task_routes = {NOOP_TASK: {"queue": NOOP_QUEUE}}
celery.conf.beat_schedule = {}


@celery.task(name=NOOP_TASK)
def noop(payload=None) -> None:
    """Nothing: what the broker and Celery cost per task."""
