"""The lease that lets exactly one beat schedule the periodic tasks, however many run (SPEC 13.1).

A beat holds the lease while it renews it in time; one that stops renewing (killed, cut off from the
database, stopped) loses it when it expires, and the next beat to ask takes it. Taking and renewing are
one statement each, decided by PostgreSQL alone: its row lock serialises two beats asking at once and
its clock says whether the lease has expired, so a beat host whose clock is off changes nothing.

Kept in PostgreSQL rather than in a Redis lock (celery-redbeat's way): the lease then lives where the
periodic tasks' work and their `sweep_runs` records live, reads PostgreSQL's clock as SPEC 13.1 asks,
and a site whose Celery broker is RabbitMQ does not need Redis for beat to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import SchedulerLease

BEAT = "beat"
# PostgreSQL's clock in ms since the epoch, read when the statement runs (not when its transaction began).
_DATABASE_NOW = sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()) * 1000, sa.BigInteger)


@dataclass(frozen=True)
class Lease:
    holder: str
    held_since_timestamp: int
    expires_timestamp: int


def hold(session: so.Session, holder: str, seconds: float, name: str = BEAT) -> bool:
    """Take the lease `name` for `seconds`, or renew it if `holder` has it; False while another holds it."""
    expires = _DATABASE_NOW + int(seconds * 1000)
    insert = pg_insert(SchedulerLease).values(
        name=name, holder=holder, held_since_timestamp=_DATABASE_NOW, expires_timestamp=expires
    )
    table = SchedulerLease.__table__.c
    kept = table.holder == insert.excluded.holder
    stmt = insert.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "holder": insert.excluded.holder,
            "expires_timestamp": insert.excluded.expires_timestamp,
            "held_since_timestamp": sa.case(
                (kept, table.held_since_timestamp), else_=insert.excluded.held_since_timestamp
            ),
        },
        where=kept | (table.expires_timestamp < _DATABASE_NOW),
    ).returning(table.holder)
    return session.execute(stmt).first() is not None


def release(session: so.Session, holder: str, name: str = BEAT) -> bool:
    """Give the lease up if `holder` has it, so another beat takes it at its next try instead of at expiry."""
    stmt = sa.delete(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.holder == holder)
    return session.execute(stmt.returning(SchedulerLease.holder)).first() is not None


def current(conn: sa.Connection | so.Session, name: str = BEAT) -> Lease | None:
    """The lease as stored (expired or not), for status."""
    row = conn.execute(
        sa.select(SchedulerLease.holder, SchedulerLease.held_since_timestamp, SchedulerLease.expires_timestamp).where(
            SchedulerLease.name == name
        )
    ).first()
    return Lease(*row) if row else None
