"""Which failures park an outbox row (SPEC 10.1, 14): only its own refusals, never an outage however long."""

from __future__ import annotations

import kafka.errors as kafka_errors
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import OutboxMessage
from app.outbox.store import add_message
from app.unit_of_work import unit_of_work
from workers import relay

pytestmark = pytest.mark.committing  # _mark writes the rows as the relay does, in transactions of its own


def _rows(app, count: int, *, attempts: int, refusals: int) -> list:
    with app.app_context():
        with unit_of_work(db.session) as session:
            for n in range(count):
                add_message(session, "Sample.Analysis.Job.OSL", f"job-{n}", {"n": n})
        with unit_of_work(db.session) as session:
            session.execute(sa.update(OutboxMessage).values(attempts=attempts, refusals=refusals))
        return db.session.execute(
            sa.select(OutboxMessage.id, OutboxMessage.attempts, OutboxMessage.refusals).order_by(OutboxMessage.id)
        ).all()


def _mark(app, settings, rows, acked, failures) -> list:
    with app.app_context():
        with unit_of_work(db.session) as session:
            relay._mark(session, settings, rows, acked, failures)
        return db.session.execute(
            sa.select(
                OutboxMessage.id, OutboxMessage.attempts, OutboxMessage.refusals, OutboxMessage.parked_timestamp
            ).order_by(OutboxMessage.id)
        ).all()


def _failure(error: Exception) -> relay._Failure:
    return relay._Failure(repr(error), relay.is_permanent(error), relay._is_broker_trouble(error))


def test_a_long_outage_and_a_partial_recovery_park_nothing(app, settings, database_url):
    """Fault: Kafka away for longer than outbox_max_attempts back-offs (about 22 minutes at 50), then back for some
    partitions only. The rows had failed 50 times, so the first batch where others got through parked them,
    though nothing was wrong with them."""
    rows = _rows(app, 3, attempts=settings.outbox_max_attempts + 10, refusals=0)
    outage = {row.id: _failure(kafka_errors.KafkaTimeoutError("no broker")) for row in rows}
    after_outage = _mark(app, settings, rows, [], outage)
    assert [(r.attempts, r.refusals, r.parked_timestamp) for r in after_outage] == [
        (settings.outbox_max_attempts + 11, 0, None)
    ] * 3
    # Partial recovery: the first row goes through, the others' partition has no leader yet.
    rows = after_outage
    partial = {row.id: _failure(kafka_errors.NotLeaderForPartitionError()) for row in rows[1:]}
    after_partial = _mark(app, settings, rows, [rows[0].id], partial)
    assert [r.parked_timestamp for r in after_partial[1:]] == [None, None]
    assert [r.refusals for r in after_partial[1:]] == [0, 0]


def test_a_row_refused_for_its_own_reason_while_others_go_through_is_parked(app, settings, database_url):
    refusal = kafka_errors.BrokerNotAvailableError()  # not retriable: kafka-python calls it this row's trouble
    rows = _rows(app, 3, attempts=3, refusals=settings.outbox_max_attempts - 1)
    after = _mark(app, settings, rows[:2], [rows[0].id], {rows[1].id: _failure(refusal)})
    assert after[1].refusals == settings.outbox_max_attempts and after[1].parked_timestamp is not None
    # The same refusal in a batch where nothing went through is an outage: no refusal counted, nothing parked.
    after = _mark(app, settings, rows[2:], [], {rows[2].id: _failure(refusal)})
    assert after[2].refusals == settings.outbox_max_attempts - 1 and after[2].parked_timestamp is None


def test_a_record_the_broker_can_never_take_is_parked_at_once(app, settings, database_url):
    rows = _rows(app, 2, attempts=0, refusals=0)
    too_large = {rows[1].id: _failure(kafka_errors.MessageSizeTooLargeError())}
    after = _mark(app, settings, rows, [rows[0].id], too_large)
    assert after[1].parked_timestamp is not None and after[0].parked_timestamp is None
