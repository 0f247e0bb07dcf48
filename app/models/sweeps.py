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
