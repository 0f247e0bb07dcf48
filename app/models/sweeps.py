from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.models.base import Base


class SweepRun(Base):
    """When a periodic task (a sweep, the purge) last finished and how many rows it moved or deleted."""

    __tablename__ = "sweep_runs"

    name: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)
    # When beat first scheduled it: a task that never ran is overdue counted from here.
    expected_since_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_run_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    last_moved: so.Mapped[int | None] = so.mapped_column(sa.Integer)


class SchedulerLease(Base):
    """Who may schedule the periodic tasks (SPEC 13.1): one row per lease, held until `expires_timestamp`.

    Both timestamps are PostgreSQL's clock (ms since the epoch), written by the statement that takes or
    renews the lease, so a beat host whose clock is off can neither keep a lease too long nor take one early.
    """

    __tablename__ = "scheduler_leases"

    name: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)
    holder: so.Mapped[str] = so.mapped_column(sa.String(255))
    held_since_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    expires_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
