"""The outbox relay: unsent outbox rows to Kafka, marked sent only once Kafka acknowledged them.

One batch is one transaction: claim due rows (FOR UPDATE SKIP LOCKED), send them, flush
once, wait on every future, then mark the acknowledged rows sent and give the failed ones
a later attempt (exponential back-off, capped) and their error. A transaction advisory
lock lets only one batch be in flight at a time.

Order per key (SPEC 10.1): a batch claims only the oldest unsent row of each key, so a
row is sent only once every earlier row of its job was acknowledged and marked sent.
(The alternative, sending several rows of a key per batch and stopping at the first
failure, cannot undo a later row kafka-python already delivered in parallel with the one
that failed.) A key's backlog thus drains one row per batch; a burst spreads over many
keys, so batches stay full. A row that fails waits out its back-off and its key waits
with it; every other key flows.

Parking: a row the broker can never take (too large, forbidden or invalid topic) is
parked at once; a row refused `outbox_max_attempts` times for a reason of its own is parked.
A refusal is the row's own when other rows of its batch got through and the error is not one
the broker calls retriable (a leader moving, a timeout, a broker away): an outage, however
long, and a partial recovery where its partition is still away park nothing. A parked row and
the later rows of its key wait until `sampledb-jobs outbox retry` puts it back in line.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import kafka.errors as kafka_errors
import sqlalchemy as sa
import sqlalchemy.orm as so

from app.clock import now_ms
from app.config import Settings
from app.models import OutboxMessage
from app.operations import metrics
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

# Errors retrying cannot fix: the record or its topic is refused (kafka-python marks these
# retriable=False). Other non-retriable errors (producer fenced, out-of-order sequence,
# closed producer) belong to the producer, not the row: a fresh producer retries the row.
PERMANENT_ERRORS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.InvalidTopicError,
    ValueError,
    TypeError,  # send() refuses a record or topic name it can never take
)


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, PERMANENT_ERRORS)


def _is_broker_trouble(error: BaseException) -> bool:
    """kafka-python marks the errors a retry can fix as retriable (a leader moving, a timeout, no connection)."""
    return bool(getattr(error, "retriable", False))


def backoff_ms(attempts: int) -> int:
    """Delay before attempt number `attempts + 1`: 0.5 s, 1 s, 2 s, ... at most 30 s."""
    return min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** max(0, attempts - 1))


@dataclass
class RelayOutcome:
    sent: int = 0
    failed: int = 0
    parked: int = 0
    busy: bool = False  # another relay held the lock on the first batch
    more: bool = False  # the time budget ran out with rows still due
    lag_ms: int = 0  # age of the oldest row this run sent or tried

    def __str__(self) -> str:
        return (
            f"sent={self.sent} failed={self.failed} parked={self.parked} busy={self.busy} more={self.more} "
            f"lag_ms={self.lag_ms}"
        )


@dataclass
class _Batch:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    parked: int = 0
    successors: bool = False  # a row sent in this batch has a later unsent row of its key
    busy: bool = False
    oldest: int | None = None


@dataclass(frozen=True)
class _Failure:
    error: str
    permanent: bool
    broker: bool = True  # the broker's or the producer's trouble (retriable, or no answer), not the row's


def relay_outbox(
    session: so.Session,
    settings: Settings,
    *,
    batch_size: int = BATCH_SIZE,
    budget_seconds: float = 10.0,
    send_timeout: float = SEND_TIMEOUT_SECONDS,
    on_first_lock: Callable[[], None] | None = None,
    another_batch_asked: Callable[[], bool] | None = None,
) -> RelayOutcome:
    """Relay due rows batch by batch until nothing more is due, nothing goes through or the budget ends.

    `on_first_lock` runs once the first batch holds the relay lock, before it reads the
    outbox (the dispatcher clears its "relay pending" flag there). `another_batch_asked()`
    runs when nothing is left due: True (a relay found the lock busy meanwhile) makes one more batch.
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
        outcome.parked += batch.parked
        if batch.oldest is not None:
            outcome.lag_ms = max(outcome.lag_ms, now_ms() - batch.oldest)
        # Nothing went through (the broker is away): the failed rows wait out their back-off.
        if batch.claimed and not batch.sent:
            break
        # A short batch whose keys have no successors left nothing due behind it, but what the relays that
        # found the lock busy meanwhile were woken for.
        if (
            batch.claimed < batch_size
            and not batch.successors
            and (another_batch_asked is None or not another_batch_asked())
        ):
            break
        if time.monotonic() >= deadline:
            outcome.more = True
            break
    return outcome


# The relay's conditions and its claim are built once: a batch runs for every few commits, and building them
# anew made an alias of the outbox table (a Column object per column) twice a batch.


@functools.cache
def _earlier_unsent():
    """An earlier unsent row of the same key exists: the row must wait for it."""
    earlier = so.aliased(OutboxMessage)
    return (
        sa.select(earlier.id)
        .where(earlier.key == OutboxMessage.key, earlier.id < OutboxMessage.id, earlier.sent_timestamp.is_(None))
        .exists()
    )


@functools.cache
def _later_unsent():
    later = so.aliased(OutboxMessage)
    return (
        sa.select(later.id)
        .where(later.key == OutboxMessage.key, later.id > OutboxMessage.id, later.sent_timestamp.is_(None))
        .exists()
    )


@functools.cache
def _heads():
    """Unsent, unparked rows with no earlier unsent row of their key: the only rows the relay may send."""
    return sa.and_(OutboxMessage.sent_timestamp.is_(None), OutboxMessage.parked_timestamp.is_(None), ~_earlier_unsent())


def _relay_batch(
    session: so.Session, settings: Settings, limit: int, send_timeout: float, on_lock: Callable[[], None] | None
) -> _Batch:
    batch = _Batch()
    with unit_of_work(session):
        if not session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(RELAY_LOCK_KEY))):
            batch.busy = True
            return batch
        if on_lock is not None:
            on_lock()
        rows = session.execute(_claim(limit), {"now": now_ms()}).all()
        batch.claimed = len(rows)
        if rows:
            batch.oldest = min(r.created_timestamp for r in rows)
            acked, failures = _send(settings, rows, send_timeout)
            batch.parked = _mark(session, settings, rows, acked, failures)
            batch.sent, batch.failed = len(acked), len(failures)
            acked_ids = set(acked)
            batch.successors = any(r.has_successor for r in rows if r.id in acked_ids)
    metrics.count_relayed(batch.sent, batch.failed)
    return batch


@functools.lru_cache(maxsize=8)
def _claim(limit: int) -> sa.Select:
    """The due heads, oldest first, locked; `now` is bound at each run."""
    return (
        sa.select(
            OutboxMessage.id,
            OutboxMessage.event_id,
            OutboxMessage.topic,
            OutboxMessage.key,
            OutboxMessage.value,
            OutboxMessage.attempts,
            OutboxMessage.refusals,
            OutboxMessage.created_timestamp,
            _later_unsent().label("has_successor"),
        )
        .where(_heads(), OutboxMessage.next_attempt_timestamp <= sa.bindparam("now"))
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(of=OutboxMessage, skip_locked=True)
    )


def _encode(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _send(settings: Settings, rows, send_timeout: float) -> tuple[list[int], dict[int, _Failure]]:
    """Send every row, flush once, and sort them into acknowledged ids and failures."""
    deadline = time.monotonic() + send_timeout
    failures: dict[int, _Failure] = {}
    try:
        producer = kafka.producer(
            settings.kafka_bootstrap_servers,
            (settings.job_topic, settings.abort_topic, settings.event_topic),
            max_request_size=settings.kafka_max_request_bytes,
            security=settings.kafka_client_options,
        )
    except Exception as err:
        log.warning("Kafka unreachable, %d outbox rows wait: %r", len(rows), err)
        return [], {row.id: _Failure(f"producer: {err!r}", False) for row in rows}

    futures = []
    broker_failure: _Failure | None = None
    for row in rows:
        if broker_failure is not None:  # e.g. no metadata within max_block_ms: the rest would wait as long
            failures[row.id] = broker_failure
            continue
        try:
            futures.append(
                (
                    row.id,
                    producer.send(
                        row.topic,
                        key=row.key.encode("utf-8"),
                        value=_encode(row.value),
                        headers=[("event-id", str(row.event_id).encode("ascii"))],
                        # The record's time is the database's (SPEC 13.1), not this host's wall clock, which
                        # kafka-python would use: a relay on a host whose clock runs ahead wrote future times.
                        timestamp_ms=now_ms(),
                    ),
                )
            )
        except Exception as err:
            failures[row.id] = _Failure(f"send: {err!r}", is_permanent(err), _is_broker_trouble(err))
            if not failures[row.id].permanent:
                broker_failure = failures[row.id]
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
            failures[row_id] = _Failure(f"ack: {err!r}", is_permanent(err), _is_broker_trouble(err))
    if failures:
        log.warning(
            "Kafka did not take %d of %d outbox rows: %s", len(failures), len(rows), next(iter(failures.values())).error
        )
    if any(not f.permanent for f in failures.values()):
        kafka.discard_producer()  # the producer itself may be broken (e.g. the broker restarted)
    return acked, failures


def _mark(session: so.Session, settings: Settings, rows, acked: list[int], failures: dict[int, _Failure]) -> int:
    """Record the outcome of a batch; returns how many rows it parked."""
    now = now_ms()
    if acked:
        session.execute(
            sa.update(OutboxMessage)
            .where(OutboxMessage.id.in_(acked))
            .values(sent_timestamp=now)
            .execution_options(synchronize_session=False)
        )
    updates = []
    for row in rows:
        failure = failures.get(row.id)
        if failure is None:
            continue
        attempts = row.attempts + 1
        # A refusal counts only while other rows get through and the broker does not call it retriable.
        own = bool(acked) and not failure.broker and not failure.permanent
        refusals = row.refusals + (1 if own else 0)
        park = failure.permanent or refusals >= settings.outbox_max_attempts
        updates.append(
            {
                "id": row.id,
                "attempts": attempts,
                "refusals": refusals,
                "next_attempt_timestamp": now + backoff_ms(attempts),
                "last_error": failure.error[:ERROR_MAX_CHARS],
                "parked_timestamp": now if park else None,
            }
        )
    if updates:
        session.execute(sa.update(OutboxMessage), updates)
    parked = sum(1 for u in updates if u["parked_timestamp"] is not None)
    if parked:
        log.error("parked %d outbox rows the broker will not take; `sampledb-jobs outbox parked` lists them", parked)
    return parked


def next_attempt_in_ms(session: so.Session) -> int | None:
    """Milliseconds until the earliest row the relay may send is due (0 if one is due now), None if none waits."""
    due = session.scalar(sa.select(sa.func.min(OutboxMessage.next_attempt_timestamp)).where(_heads()))
    session.rollback()
    return None if due is None else max(0, due - now_ms())
