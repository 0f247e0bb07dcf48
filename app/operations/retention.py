"""Retention (§9.1): sent outbox rows and final jobs past their retention are deleted.

Each batch is one transaction that picks at most `batch_size` rows through an index
(`ix_outbox_sent` for sent rows by sent time, `ix_jobs_state_end` for final jobs by end
time), so the cost follows the rows deleted, not the table. Rows are claimed with
FOR UPDATE SKIP LOCKED: two purges at once split the rows between them, and a job being
changed right now is left for the next run. Jobs are deleted by the job service (`purge_jobs`).
Unsent (or parked) outbox rows have no sent time and active jobs no final state, so neither is
ever selected, however old.
A purged job's tasks and history are deleted with it, in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import cast

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.clock import now_ms
from app.config import Settings
from app.jobs import service
from app.models import Job, JobHistory, JobTask, OutboxMessage
from app.operations import metrics
from app.unit_of_work import unit_of_work

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass
class Purged:
    """Rows deleted (or, in a dry run, that would be) per table."""

    outbox: int = 0
    jobs: int = 0
    job_tasks: int = 0
    job_history: int = 0

    def add(self, other: Purged) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def by_table(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def total(self) -> int:
        return sum(self.by_table().values())


@dataclass(frozen=True)
class Horizons:
    """Rows older than these (ms since the epoch) go; `jobs=None` keeps jobs forever."""

    outbox: int
    jobs: int | None

    @classmethod
    def at(cls, settings: Settings, now: int) -> Horizons:
        jobs = now - settings.job_retention_days * DAY_MS if settings.job_retention_days else None
        return cls(outbox=now - settings.outbox_retention_hours * HOUR_MS, jobs=jobs)


def _expired_outbox(horizon: int) -> sa.ColumnElement[bool]:
    # The explicit IS NOT NULL matches the partial index's predicate.
    return sa.and_(OutboxMessage.sent_timestamp.is_not(None), OutboxMessage.sent_timestamp < horizon)


def purge_outbox_batch(session: so.Session, horizon: int, limit: int) -> Purged:
    """Delete up to `limit` sent outbox rows older than `horizon`, oldest first. The caller commits."""
    claimed = (
        sa.select(OutboxMessage.id)
        .where(_expired_outbox(horizon))
        .order_by(OutboxMessage.sent_timestamp)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    # Session.execute is typed as returning Result; for a DELETE it is a CursorResult, which has rowcount.
    result = cast(
        sa.CursorResult,
        session.execute(
            sa.delete(OutboxMessage)
            .where(OutboxMessage.id.in_(claimed.scalar_subquery()))
            .execution_options(synchronize_session=False)
        ),
    )
    return Purged(outbox=result.rowcount)


def purge_jobs_batch(session: so.Session, horizon: int, limit: int) -> Purged:
    """Delete up to `limit` final jobs that ended before `horizon`, with their tasks and history (through the
    job service, the one code that changes jobs). The caller commits."""
    return Purged(**service.purge_jobs(session, horizon, limit))


def purge(session: so.Session, settings: Settings, *, budget_seconds: float | None = None) -> Purged:
    """Delete everything past retention, batch by batch, each batch committed on its own.

    Stops when a batch comes back short or `budget_seconds` have passed (the next run goes on).
    """
    horizons = Horizons.at(settings, now_ms())
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    total = Purged()
    batches = [lambda: purge_outbox_batch(session, horizons.outbox, settings.purge_batch_size)]
    if horizons.jobs is not None:
        jobs_horizon = horizons.jobs
        batches.append(lambda: purge_jobs_batch(session, jobs_horizon, settings.purge_batch_size))
    for batch in batches:
        while True:
            with unit_of_work(session):
                purged = batch()
            metrics.count_purged(purged.by_table())
            total.add(purged)
            if purged.total == 0 or max(purged.outbox, purged.jobs) < settings.purge_batch_size:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return total
    return total


def would_purge(session: so.Session, settings: Settings) -> Purged:
    """What `purge` would delete now, counted without deleting (a dry run)."""
    horizons = Horizons.at(settings, now_ms())
    counts = Purged(outbox=session.scalars(sa.select(sa.func.count()).where(_expired_outbox(horizons.outbox))).one())
    if horizons.jobs is not None:
        expired = sa.select(Job.id).where(service.ended_before(horizons.jobs))
        counts.jobs = session.scalars(sa.select(sa.func.count()).select_from(expired.subquery())).one()
        counts.job_tasks = session.scalars(sa.select(sa.func.count()).where(JobTask.job_id.in_(expired))).one()
        counts.job_history = session.scalars(sa.select(sa.func.count()).where(JobHistory.job_id.in_(expired))).one()
    session.rollback()
    return counts
