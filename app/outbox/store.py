"""The transactional outbox: Kafka messages written in the same transaction as the change they announce.

`add_message` stages a row in the caller's session; nothing reaches Kafka unless that
transaction commits. After a unit of work that wrote outbox rows commits, the registered
relay trigger runs (the app factory registers app.outbox.trigger's, which schedules
`sampledb.relay_outbox`).

Parked rows (SPEC 10.1: the broker will never take them as they are, or they failed too
often) are listed and put back in line here, for `sampledb-jobs outbox parked|retry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.clock import now_ms
from app.models import OutboxMessage
from app.unit_of_work import after_commit

log = logging.getLogger(__name__)

_relay_triggers: list[Callable[[], None]] = []


def add_message(session: so.Session, topic: str, key: str, value: dict) -> OutboxMessage:
    message = OutboxMessage(
        topic=topic, key=key, value=value, created_timestamp=now_ms(), attempts=0, next_attempt_timestamp=0
    )
    session.add(message)
    after_commit(session, _trigger_relay, once=_trigger_relay)
    return message


def parked_messages(session: so.Session) -> Sequence[OutboxMessage]:
    """Every parked row, oldest first."""
    return session.scalars(
        sa.select(OutboxMessage)
        .where(OutboxMessage.parked_timestamp.is_not(None), OutboxMessage.sent_timestamp.is_(None))
        .order_by(OutboxMessage.id)
    ).all()


def retry_parked(session: so.Session, ids: Sequence[int] | None = None) -> list[int]:
    """Put parked rows (all, or those of `ids`) back in line with fresh attempts; returns their ids.
    The caller commits, which triggers the relay."""
    released = session.scalars(
        sa.update(OutboxMessage)
        .where(
            OutboxMessage.parked_timestamp.is_not(None),
            OutboxMessage.sent_timestamp.is_(None),
            *([OutboxMessage.id.in_(ids)] if ids is not None else []),
        )
        .values(parked_timestamp=None, attempts=0, refusals=0, next_attempt_timestamp=0)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    ).all()
    if released:
        after_commit(session, _trigger_relay, once=_trigger_relay)
    return sorted(released)


def on_commit_trigger(trigger: Callable[[], None]) -> None:
    """Run `trigger` after every unit of work that wrote outbox rows (registered once per process)."""
    if trigger not in _relay_triggers:
        _relay_triggers.append(trigger)


def _trigger_relay() -> None:
    for trigger in _relay_triggers:
        try:
            trigger()
        except Exception:  # the beat safety net relays the rows later; the commit itself stands
            log.warning("could not trigger the outbox relay; beat will relay later", exc_info=True)
