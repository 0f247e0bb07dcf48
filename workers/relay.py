"""The outbox relay: unsent outbox rows to Kafka, marked sent only once Kafka acknowledged them.

One batch is one transaction: claim the oldest due rows (FOR UPDATE SKIP LOCKED), send them
all, flush once, wait on every future, then mark the acknowledged rows sent and give the
failed ones a later attempt (exponential back-off, capped) and their error. A transaction
advisory lock lets only one batch be in flight at a time, so one job's messages reach
Kafka in the order they were written (rows of one job are written in order: its row lock
serialises the transactions that write them). After a failed send that order can break: a
row waiting out its back-off may go out after a later row of the same job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.config import Settings
from app.models import OutboxMessage, now_ms
from app.unit_of_work import unit_of_work
from workers import kafka

log = logging.getLogger(__name__)

# pg advisory lock key of the relay ("SDBOUTBX" as a 64-bit integer).
RELAY_LOCK_KEY = int.from_bytes(b"SDBOUTBX", "big") & 0x7FFF_FFFF_FFFF_FFFF
BATCH_SIZE = 500
SEND_TIMEOUT_SECONDS = 10.0
BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 30_000
ERROR_MAX_CHARS = 2000


def backoff_ms(attempts: int) -> int:
    """Delay before attempt number `attempts + 1`: 0.5 s, 1 s, 2 s, ... at most 30 s."""
    return min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** max(0, attempts - 1))


@dataclass
class RelayOutcome:
    sent: int = 0
    failed: int = 0
    busy: bool = False  # another relay held the lock on the first batch
    more: bool = False  # the time budget ran out with rows still due
    lag_ms: int = 0  # age of the oldest row this run sent or tried

    def __str__(self) -> str:
        return f"sent={self.sent} failed={self.failed} busy={self.busy} more={self.more} lag_ms={self.lag_ms}"


@dataclass
class _Batch:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    busy: bool = False
    oldest: int | None = None


def relay_outbox(
    session: so.Session, settings: Settings, *, batch_size: int = BATCH_SIZE, budget_seconds: float = 10.0,
    send_timeout: float = SEND_TIMEOUT_SECONDS, on_first_lock: Callable[[], None] | None = None,
) -> RelayOutcome:
    """Relay due rows batch by batch until a batch comes back short, a send fails or the budget ends.

    `on_first_lock` runs once the first batch holds the relay lock, before it reads the
    outbox (the dispatcher clears its "relay pending" flag there).
    """
    deadline = time.monotonic() + budget_seconds
    outcome = RelayOutcome()
    first = True
    while True:
        batch = _relay_batch(session, settings, batch_size, send_timeout, on_first_lock if first else None)
        if batch.busy:
            # On later batches another relay took over and drains the rest itself.
            outcome.busy = first
            break
        first = False
        outcome.sent += batch.sent
        outcome.failed += batch.failed
        if batch.oldest is not None:
            outcome.lag_ms = max(outcome.lag_ms, now_ms() - batch.oldest)
        if batch.failed or batch.claimed < batch_size:
            break
        if time.monotonic() >= deadline:
            outcome.more = True
            break
    return outcome


def _relay_batch(session: so.Session, settings: Settings, limit: int, send_timeout: float,
                 on_lock: Callable[[], None] | None) -> _Batch:
    batch = _Batch()
    with unit_of_work(session):
        if not session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(RELAY_LOCK_KEY))):
            batch.busy = True
            return batch
        if on_lock is not None:
            on_lock()
        now = now_ms()
        rows = session.execute(
            sa.select(OutboxMessage.id, OutboxMessage.event_id, OutboxMessage.topic, OutboxMessage.key,
                      OutboxMessage.value, OutboxMessage.attempts, OutboxMessage.created_timestamp)
            .where(OutboxMessage.sent_timestamp.is_(None), OutboxMessage.next_attempt_timestamp <= now)
            .order_by(OutboxMessage.id).limit(limit).with_for_update(skip_locked=True)
        ).all()
        batch.claimed = len(rows)
        if rows:
            batch.oldest = min(r.created_timestamp for r in rows)
            acked, errors = _send(settings, rows, send_timeout)
            _mark(session, rows, acked, errors)
            batch.sent, batch.failed = len(acked), len(errors)
    return batch


def _encode(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _send(settings: Settings, rows, send_timeout: float) -> tuple[list[int], dict[int, str]]:
    """Send every row, flush once, and sort them into acknowledged ids and failed ids with their error."""
    deadline = time.monotonic() + send_timeout
    errors: dict[int, str] = {}
    try:
        producer = kafka.producer(settings.kafka_bootstrap_servers,
                                  (settings.job_topic, settings.abort_topic, settings.event_topic))
    except Exception as err:
        log.warning("Kafka unreachable, %d outbox rows wait: %r", len(rows), err)
        return [], {row.id: f"producer: {err!r}" for row in rows}

    futures = []
    for row in rows:
        if errors:  # one send refused (e.g. no metadata in max_block_ms): the rest would be too
            errors[row.id] = errors[next(iter(errors))]
            continue
        try:
            futures.append((row.id, producer.send(
                row.topic, key=row.key.encode("utf-8"), value=_encode(row.value),
                headers=[("event-id", str(row.event_id).encode("ascii"))],
            )))
        except Exception as err:
            errors[row.id] = f"send: {err!r}"
    try:
        producer.flush(timeout=send_timeout)
    except Exception:  # a timeout here is reported per record below
        pass

    acked: list[int] = []
    for row_id, future in futures:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
            acked.append(row_id)
        except Exception as err:
            errors[row_id] = f"ack: {err!r}"
    if errors:
        log.warning("Kafka did not acknowledge %d of %d outbox rows: %s", len(errors), len(rows),
                    next(iter(errors.values())))
        kafka.discard_producer()
    return acked, errors


def _mark(session: so.Session, rows, acked: list[int], errors: dict[int, str]) -> None:
    now = now_ms()
    if acked:
        session.execute(sa.update(OutboxMessage).where(OutboxMessage.id.in_(acked)).values(sent_timestamp=now)
                        .execution_options(synchronize_session=False))
    if errors:
        session.execute(sa.update(OutboxMessage), [
            {"id": row.id, "attempts": row.attempts + 1, "next_attempt_timestamp": now + backoff_ms(row.attempts + 1),
             "last_error": errors[row.id][:ERROR_MAX_CHARS]}
            for row in rows if row.id in errors
        ])


def next_attempt_in_ms(session: so.Session) -> int | None:
    """Milliseconds until the earliest unsent row is due again (0 if one is due now), None if none waits."""
    due = session.scalar(sa.select(sa.func.min(OutboxMessage.next_attempt_timestamp))
                         .where(OutboxMessage.sent_timestamp.is_(None)))
    session.rollback()
    return None if due is None else max(0, due - now_ms())

