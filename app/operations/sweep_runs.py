"""When each periodic task (the sweeps, the purge) last ran and what it moved, for `sampledb-jobs status`.

Kept in PostgreSQL (table `sweep_runs`) rather than Redis: it survives a broker restart
or flush, and status reads it in the same connection as the other figures. Beat marks
the tasks it schedules as expected when it starts, so a task that never ran shows up
as overdue instead of being invisible.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.config import Settings
from app.models import SweepRun
from app.task_names import TaskNames


def periodic_intervals(settings: Settings) -> dict[str, int]:
    """The periodic tasks beat runs and status watches (not the relay's safety net), and their interval in s."""
    return {
        TaskNames.SWEEP_EXECUTION_TIMEOUTS: settings.sweep_interval_seconds,
        TaskNames.SWEEP_ENQUEUED_TIMEOUTS: settings.sweep_interval_seconds,
        TaskNames.SWEEP_UNCONFIRMED_ABORTS: settings.sweep_interval_seconds,
        TaskNames.PURGE: settings.purge_interval_seconds,
        TaskNames.INGEST_PENDING: settings.pending_ingest_interval_seconds,
    }


def expect(session: so.Session, names: Iterable[str], now: int) -> None:
    """Mark periodic tasks as scheduled from `now` on (tasks already known keep their record)."""
    rows = [{"name": name, "expected_since_timestamp": now} for name in names]
    if rows:
        session.execute(pg_insert(SweepRun).values(rows).on_conflict_do_nothing(index_elements=["name"]))


def record(session: so.Session, name: str, moved: int, now: int) -> None:
    """A run of `name` finished at `now` having moved (or deleted) `moved` rows."""
    stmt = pg_insert(SweepRun).values(name=name, expected_since_timestamp=now, last_run_timestamp=now, last_moved=moved)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"last_run_timestamp": now, "last_moved": moved})
    )


def all_runs(conn: sa.Connection) -> list[sa.Row]:
    return list(conn.execute(sa.select(SweepRun.__table__).order_by(SweepRun.name)).all())
