"""`sampledb-jobs status`: a running service's health at a glance (§9.3), and whether it crossed a threshold.

`take_snapshot` reads the figures (the same vital signs as the metrics' gauges, the jobs
created lately, the periodic tasks' last runs); `problems` names every threshold
crossed; `render` draws the snapshot as a rich table for the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from app.clock import now_ms
from app.config import Settings
from app.operations.sweep_runs import all_runs, periodic_intervals
from app.operations.vitals import Vitals, read_vitals

# A periodic task not run for this many of its intervals is overdue.
OVERDUE_INTERVALS = 3


@dataclass(frozen=True)
class PeriodicRun:
    name: str
    interval_seconds: int
    expected_since: int | None  # None: beat never scheduled it against this database
    last_run: int | None
    last_moved: int | None


@dataclass(frozen=True)
class Snapshot:
    taken_at: int
    vitals: Vitals | None
    created_last_minute: int
    created_last_hour: int
    periodic: list[PeriodicRun]
    errors: list[str] = field(default_factory=list)  # parts that could not be read


def take_snapshot(engine: sa.Engine, settings: Settings) -> Snapshot:
    now = now_ms()
    try:
        vitals = read_vitals(engine, settings.redis_url)
        with engine.connect() as conn:
            created = "SELECT count(*) FROM jobs WHERE enqueued_timestamp >= :since"
            created_minute = conn.scalar(sa.text(created), {"since": now - 60_000})
            created_hour = conn.scalar(sa.text(created), {"since": now - 3_600_000})
            runs = {run.name: run for run in all_runs(conn)}
    except sa.exc.SQLAlchemyError as err:  # status reports an unreachable database, it does not crash on it
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]
        return Snapshot(now, None, 0, 0, [], [f"postgresql: cannot read the figures: {reason}"])
    periodic = [
        PeriodicRun(
            name,
            interval,
            getattr(runs.get(name), "expected_since_timestamp", None),
            getattr(runs.get(name), "last_run_timestamp", None),
            getattr(runs.get(name), "last_moved", None),
        )
        for name, interval in periodic_intervals(settings).items()
    ]
    return Snapshot(now, vitals, created_minute, created_hour, periodic)


def problems(snapshot: Snapshot, settings: Settings) -> list[str]:
    """Every threshold the snapshot crosses, in words; empty when healthy."""
    found = list(snapshot.errors)
    vitals = snapshot.vitals
    if vitals is not None:
        if vitals.outbox_oldest_unsent_age_seconds > settings.status_outbox_max_age_seconds:
            found.append(
                f"outbox: the oldest unsent row is {vitals.outbox_oldest_unsent_age_seconds:.0f} s old "
                f"(more than {settings.status_outbox_max_age_seconds} s): is Kafka or the relay down?"
            )
        if vitals.outbox_parked:
            found.append(f"outbox: {vitals.outbox_parked} parked rows wait for an operator")
        if vitals.dead_submissions:
            found.append(f"submissions: {vitals.dead_submissions} dead submissions are stored")
        if vitals.queue_lengths is None:
            found.append("redis: the Celery broker does not answer")
    for run in snapshot.periodic:
        since = run.last_run or run.expected_since
        if since is None:
            found.append(f"{run.name}: never scheduled (is beat running?)")
        elif snapshot.taken_at - since > OVERDUE_INTERVALS * run.interval_seconds * 1000:
            what = "last ran" if run.last_run else "never ran since beat scheduled it"
            found.append(
                f"{run.name}: {what} {(snapshot.taken_at - since) / 1000:.0f} s ago "
                f"(more than {OVERDUE_INTERVALS} intervals of {run.interval_seconds} s)"
            )
    return found


def _ago(taken_at: int, timestamp: int | None) -> str:
    return "never" if timestamp is None else f"{(taken_at - timestamp) / 1000:.0f} s ago"


def render(snapshot: Snapshot, found: list[str]):
    """The snapshot as rich renderables: the figures, the periodic tasks, and the verdict."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    figures = Table(title="sampledb-jobs", show_header=False, title_justify="left")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    vitals = snapshot.vitals
    if vitals is not None:
        for state, count in vitals.jobs_active.items():
            figures.add_row(f"jobs {state}", f"{count:,}")
    figures.add_row("jobs created, last minute", f"{snapshot.created_last_minute:,}")
    figures.add_row("jobs created, last hour", f"{snapshot.created_last_hour:,}")
    if vitals is not None:
        figures.add_row("outbox backlog", f"{vitals.outbox_backlog:,}")
        figures.add_row("outbox oldest unsent", f"{vitals.outbox_oldest_unsent_age_seconds:.1f} s")
        figures.add_row("outbox parked", f"{vitals.outbox_parked:,}")
        figures.add_row("dead submissions", f"{vitals.dead_submissions:,}")
        for queue, length in (vitals.queue_lengths or {}).items():
            figures.add_row(f"queue {queue}", f"{length:,}")
    periodic = Table(show_header=True, title="periodic tasks", title_justify="left")
    for column in ("task", "every", "last ran", "moved"):
        periodic.add_column(column)
    for run in snapshot.periodic:
        periodic.add_row(
            run.name,
            f"{run.interval_seconds} s",
            _ago(snapshot.taken_at, run.last_run),
            "-" if run.last_moved is None else f"{run.last_moved:,}",
        )
    verdict = (
        Text("healthy", style="bold green")
        if not found
        else Text("UNHEALTHY\n" + "\n".join(f"- {problem}" for problem in found), style="bold red")
    )
    return Group(figures, periodic, verdict)
