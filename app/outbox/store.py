"""The transactional outbox: Kafka messages written in the same transaction as the change they announce.

`add_message` stages a row in the caller's session; nothing reaches Kafka unless that
transaction commits. After a commit that wrote outbox rows, the registered relay
trigger runs (the workers register one that schedules `sampledb.relay_outbox`).

Parked rows (SPEC 10.1: the broker will never take them as they are, or they failed too
often) are listed and put back in line here, for `sampledb-jobs outbox parked|retry`.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy import event

from app.models import OutboxMessage, now_ms

log = logging.getLogger(__name__)

_PENDING_FLAG = "sampledb_outbox_written"
_relay_triggers: list[Callable[[], None]] = []


def add_message(session: so.Session, topic: str, key: str, value: dict) -> OutboxMessage:
    message = OutboxMessage(topic=topic, key=key, value=value, created_timestamp=now_ms(), attempts=0,
                            next_attempt_timestamp=0)
    session.add(message)
    session.info[_PENDING_FLAG] = True
    return message


def parked_messages(session: so.Session) -> Sequence[OutboxMessage]:
    """Every parked row, oldest first."""
    return session.scalars(sa.select(OutboxMessage).where(OutboxMessage.parked_timestamp.is_not(None),
                                                          OutboxMessage.sent_timestamp.is_(None))
                           .order_by(OutboxMessage.id)).all()


def retry_parked(session: so.Session, ids: Sequence[int] | None = None) -> list[int]:
    """Put parked rows (all, or those of `ids`) back in line with fresh attempts; returns their ids.
    The caller commits, which triggers the relay."""
    released = session.scalars(
        sa.update(OutboxMessage)
        .where(OutboxMessage.parked_timestamp.is_not(None), OutboxMessage.sent_timestamp.is_(None),
               *([OutboxMessage.id.in_(ids)] if ids is not None else []))
        .values(parked_timestamp=None, attempts=0, next_attempt_timestamp=0)
        .returning(OutboxMessage.id).execution_options(synchronize_session=False)
    ).all()
    if released:
        session.info[_PENDING_FLAG] = True
    return sorted(released)


def on_commit_trigger(trigger: Callable[[], None]) -> None:
    """Run `trigger` after every commit that wrote outbox rows (registered once per process)."""
    if trigger not in _relay_triggers:
        _relay_triggers.append(trigger)


@event.listens_for(so.Session, "after_commit")
def _after_commit(session: so.Session) -> None:
    if not session.info.pop(_PENDING_FLAG, False):
        return
    for trigger in _relay_triggers:
        try:
            trigger()
        except Exception:  # the beat safety net relays the rows later; the commit itself stands
            log.warning("could not trigger the outbox relay; beat will relay later", exc_info=True)


@event.listens_for(so.Session, "after_rollback")
def _after_rollback(session: so.Session) -> None:
    session.info.pop(_PENDING_FLAG, None)
