"""Tasks whose messages a Celery worker runs in batches, each message still sent on its own.

A task class with `Strategy = "workers.batching:batching_strategy"` keeps its name and its
message contract (one call, one message); the worker's main process collects the messages
it receives and hands them to a pool process as one call of the task's `run_batch`
(a list of `Message`s) whenever a pool process is free (all but one of them: the other stays
free for the relay and the sweeps): one submission alone goes out at once, and while the
pool is busy the next batch grows (group commit, without a timer).
Each message is acknowledged only after its batch returned (acks_late); a batch whose
pool process died is rejected back to the queue (task_reject_on_worker_lost), and one
the worker never ran comes back after Redis' visibility timeout.

celery-batches does the same, but its releases require Celery < 5.7; this is the part of
it the service needs. The strategy raises its worker's prefetch by `batch_size` (as Celery
does for ETA tasks) so that a batch can fill while acks_late keeps messages unacknowledged.
Messages with an ETA (retries with a countdown) join the next batch once due. Each message
still has its task events (received, started, succeeded or failed) for Flower.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery.app.trace import LOG_SUCCESS
from celery.app.trace import logger as trace_log
from celery.utils.imports import symbol_by_name
from celery.utils.time import timezone
from celery.worker.request import create_request_cls
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.asynchronous.timer import to_timestamp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """What a pool process gets of one message: its task id, arguments and how often it was retried."""

    id: str
    args: tuple
    kwargs: dict
    retries: int


def run_in_pool(task_name: str, messages: list[Message]) -> Any:
    """The pool side: the registered task's run_batch, in the Flask app context as FlaskTask runs tasks.

    run_batch returning means every message is dealt with (acknowledged), with a list of one return value
    per message (logged and announced as each task's result) or None; raising puts them all back.
    """
    from workers.celery_app import celery, work_context

    with work_context():
        return celery.tasks[task_name].run_batch(messages)


def _events(requests: list, kind: str, **fields) -> None:
    for request in requests:
        request.send_event(kind, **fields)


def _redelivered(request) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def _next_batch(waiting: list, size: int) -> list:
    """The next batch from the front of `waiting`: a message the broker delivers again (its batch's pool process
    died, or it outlived the visibility timeout) goes alone, so a payload that kills its process takes no
    batch-mate down a second time; otherwise up to `size` messages that are delivered for the first time."""
    if _redelivered(waiting[0]):
        return waiting[:1]
    batch = []
    for request in waiting[:size]:
        if _redelivered(request):
            break
        batch.append(request)
    return batch


def batching_strategy(task, app, consumer, **_kwargs):
    """The worker's handler of the task's messages (Celery calls it once per worker with the task)."""
    Request = create_request_cls(
        symbol_by_name(task.Request), task, consumer.pool, consumer.hostname, consumer.event_dispatcher, app=app
    )
    pool = consumer.pool
    # Batches take all pool processes but one, which stays free for the relay and the sweeps.
    processes = max(1, (getattr(pool, "num_processes", None) or app.conf.worker_concurrency or 1) - 1)
    waiting: list = []
    running = [0]  # batches handed to the pool and not yet returned
    prefetch_raised = [False]  # consumer.qos exists once messages flow (it is remade, with this strategy, on reconnect)

    def dispatch() -> None:
        while waiting and running[0] < processes:
            batch = _next_batch(waiting, task.batch_size)
            del waiting[: len(batch)]
            running[0] += 1
            messages = [Message(r.id, tuple(r.args), dict(r.kwargs), r.request_dict.get("retries", 0)) for r in batch]
            started = time.monotonic()
            pool.apply_async(
                run_in_pool,
                (task.name, messages),
                accept_callback=lambda pid, _at, b=batch: _events(b, "task-started", pid=pid),
                callback=lambda values, b=batch, t=started: done(b, values, None, t),
                error_callback=lambda exc, b=batch, t=started: done(b, None, exc, t),
                timeout_callback=lambda soft, timeout, b=batch: timed_out(b, soft, timeout),
                soft_timeout=app.conf.task_soft_time_limit,
                timeout=app.conf.task_time_limit,
            )

    def timed_out(batch: list, soft: bool, limit: float) -> None:
        # Logged per message as Celery logs a task's; past the soft limit run_batch retries its messages
        # (a hung database), past the hard one its process is killed and the batch requeued.
        for request in batch:
            if soft:
                log.warning("Soft time limit (%ss) exceeded for %s[%s]", limit, request.name, request.id)
            else:
                log.error("Hard time limit (%ss) exceeded for %s[%s]", limit, request.name, request.id)

    def done(batch: list, values, error, started: float) -> None:
        running[0] -= 1
        if error is None:
            runtime = time.monotonic() - started
            values = values if isinstance(values, list) and len(values) == len(batch) else [None] * len(batch)
            for request, value in zip(batch, values):
                request.acknowledge()
                # What Celery logs and announces for a task that succeeded, per message.
                trace_log.info(
                    LOG_SUCCESS, {"id": request.id, "name": request.name, "return_value": value, "runtime": runtime}
                )
                request.send_event("task-succeeded", result=repr(value), runtime=runtime)
        else:
            # run_batch raised, or its pool process died or hit the time limit: the batch runs again.
            log.error("batch of %d %s messages failed in the pool: %r; requeued", len(batch), task.name, error)
            for request in batch:
                request.reject(requeue=True)
            _events(batch, "task-failed", exception=repr(error), traceback="")
        dispatch()

    def due(request) -> None:
        consumer.qos.decrement_eventually()
        waiting.append(request)
        dispatch()

    def on_message(message, body, ack, reject, callbacks, **_kw):
        if not prefetch_raised[0]:
            consumer.qos.increment_eventually(task.batch_size)
            prefetch_raised[0] = True
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = message.body, message.headers, False, app.uses_utc_timezone()
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        request = Request(
            message,
            on_ack=ack,
            on_reject=reject,
            app=app,
            hostname=consumer.hostname,
            eventer=consumer.event_dispatcher,
            task=task,
            connection_errors=consumer.connection_errors,
            body=body,
            headers=headers,
            decoded=decoded,
            utc=utc,
        )
        # Task events for Flower, as Celery's own strategy sends them: each message is still a task.
        request.send_event(
            "task-received",
            name=request.name,
            args=request.argsrepr,
            kwargs=request.kwargsrepr,
            root_id=request.root_id,
            parent_id=request.parent_id,
            retries=request.request_dict.get("retries", 0),
            eta=request.eta and request.eta.isoformat(),
            expires=request.expires and request.expires.isoformat(),
        )
        if request.eta:
            eta = (
                to_timestamp(timezone.to_system(request.eta))
                if request.utc
                else to_timestamp(request.eta, app.timezone)
            )
            consumer.qos.increment_eventually()  # a message waiting for its ETA does not hold a prefetch slot
            consumer.timer.call_at(eta, due, (request,), priority=6)
            return
        waiting.append(request)
        dispatch()

    return on_message
