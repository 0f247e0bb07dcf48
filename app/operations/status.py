"""`sampledb-jobs status`: a running service's health at a glance (§9.3), and whether it crossed a threshold.

`take_snapshot` reads the figures (the same vital signs as the metrics' gauges, the jobs
created lately, the periodic tasks' last runs); `problems` names every threshold
crossed, each at its level; `render` draws the snapshot as a rich table for the terminal,
`as_json` and `check_line` give it to a machine.

Levels follow the monitoring plugins' convention (0 OK, 1 WARNING, 2 CRITICAL): CRITICAL
when jobs stop being announced or swept or the service cannot be read (outbox older than
its threshold, a periodic task overdue or never scheduled, PostgreSQL or the Celery broker
silent), WARNING when something waits for an operator but nothing stops (parked rows,
dead submissions, a queue longer than SAMPLEDB_STATUS_QUEUE_MAX_LENGTH).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.clock import now_ms
from app.config import Settings
from app.operations import scheduler_lease
from app.operations.scheduler_lease import Lease
from app.operations.sweep_runs import all_runs, periodic_intervals
from app.operations.vitals import Vitals, read_vitals

# A periodic task not run for this many of its intervals is overdue.
OVERDUE_INTERVALS = 3


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Problem:
    level: Level
    reason: str

    def __str__(self) -> str:
        return self.reason


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
    scheduler: Lease | None = None  # the beat that schedules (its lease, expired or not); None: none ever did


def take_snapshot(engine: sa.Engine, settings: Settings) -> Snapshot:
    now = now_ms()
    try:
        vitals = read_vitals(engine, settings)
        with engine.connect() as conn:
            created = "SELECT count(*) FROM jobs WHERE enqueued_timestamp >= :since"
            created_minute = conn.scalar(sa.text(created), {"since": now - 60_000})
            created_hour = conn.scalar(sa.text(created), {"since": now - 3_600_000})
            runs = {run.name: run for run in all_runs(conn)}
            lease = scheduler_lease.current(conn)
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
    return Snapshot(now, vitals, created_minute, created_hour, periodic, scheduler=lease)


def problems(snapshot: Snapshot, settings: Settings) -> list[Problem]:
    """Every threshold the snapshot crosses, in words and at its level; empty when healthy."""
    found = [Problem(Level.CRITICAL, error) for error in snapshot.errors]
    vitals = snapshot.vitals
    if vitals is not None:
        if vitals.outbox_oldest_unsent_age_seconds > settings.status_outbox_max_age_seconds:
            found.append(
                Problem(
                    Level.CRITICAL,
                    f"outbox: the oldest unsent row is {vitals.outbox_oldest_unsent_age_seconds:.0f} s old "
                    f"(more than {settings.status_outbox_max_age_seconds} s): is Kafka or the relay down?",
                )
            )
        if vitals.outbox_parked:
            found.append(Problem(Level.WARNING, f"outbox: {vitals.outbox_parked} parked rows wait for an operator"))
        if vitals.dead_submissions:
            found.append(Problem(Level.WARNING, f"submissions: {vitals.dead_submissions} dead submissions are stored"))
        if vitals.queue_lengths is None:
            found.append(Problem(Level.CRITICAL, "broker: the Celery broker does not answer"))
        for queue, length in (vitals.queue_lengths or {}).items():
            if length > settings.status_queue_max_length:
                found.append(
                    Problem(
                        Level.WARNING,
                        f"queue {queue}: {length:,} messages wait (more than {settings.status_queue_max_length:,}): "
                        "too few workers?",
                    )
                )
    for run in snapshot.periodic:
        since = run.last_run or run.expected_since
        if since is None:
            found.append(Problem(Level.CRITICAL, f"{run.name}: never scheduled (is beat running?)"))
        elif snapshot.taken_at - since > OVERDUE_INTERVALS * run.interval_seconds * 1000:
            what = "last ran" if run.last_run else "never ran since beat scheduled it"
            found.append(
                Problem(
                    Level.CRITICAL,
                    f"{run.name}: {what} {(snapshot.taken_at - since) / 1000:.0f} s ago "
                    f"(more than {OVERDUE_INTERVALS} intervals of {run.interval_seconds} s)",
                )
            )
    return found


def level_of(found: list[Problem]) -> Level:
    return max((problem.level for problem in found), default=Level.OK)


def as_json(snapshot: Snapshot, found: list[Problem]) -> dict:
    """Every figure and every reason, for a machine (`status --json`); times in epoch milliseconds."""
    vitals = snapshot.vitals
    figures = None
    if vitals is not None:
        figures = {
            "jobsActive": vitals.jobs_active,
            "outboxBacklog": vitals.outbox_backlog,
            "outboxOldestUnsentAgeSeconds": vitals.outbox_oldest_unsent_age_seconds,
            "outboxParked": vitals.outbox_parked,
            "deadSubmissions": vitals.dead_submissions,
            "queueLengths": vitals.queue_lengths,
        }
    return {
        "level": level_of(found).name,
        "takenAt": snapshot.taken_at,
        "figures": figures,
        "jobsCreated": {"lastMinute": snapshot.created_last_minute, "lastHour": snapshot.created_last_hour},
        "scheduler": None
        if snapshot.scheduler is None
        else {
            "holder": snapshot.scheduler.holder,
            "heldSince": snapshot.scheduler.held_since_timestamp,
            "expiresAt": snapshot.scheduler.expires_timestamp,
        },
        "periodic": [
            {
                "task": run.name,
                "intervalSeconds": run.interval_seconds,
                "expectedSince": run.expected_since,
                "lastRun": run.last_run,
                "lastMoved": run.last_moved,
            }
            for run in snapshot.periodic
        ],
        "problems": [{"level": problem.level.name, "reason": problem.reason} for problem in found],
    }


def check_line(snapshot: Snapshot, found: list[Problem]) -> str:
    """The one line of a monitoring plugin: `SAMPLEDB-JOBS LEVEL - reasons | performance data`."""
    level = level_of(found)
    worst_first = sorted(found, key=lambda problem: -problem.level)
    summary = "; ".join(problem.reason for problem in worst_first) or "healthy"
    vitals = snapshot.vitals
    perfdata = [f"jobs_created_last_minute={snapshot.created_last_minute}"]
    if vitals is not None:
        perfdata += [f"jobs_{state}={count}" for state, count in vitals.jobs_active.items()]
        perfdata += [
            f"outbox_backlog={vitals.outbox_backlog}",
            f"outbox_oldest_unsent_age={vitals.outbox_oldest_unsent_age_seconds:.1f}s",
            f"outbox_parked={vitals.outbox_parked};0",
            f"dead_submissions={vitals.dead_submissions};0",
        ]
        perfdata += [f"queue_{queue}={length}" for queue, length in (vitals.queue_lengths or {}).items()]
    return f"SAMPLEDB-JOBS {level.name} - {summary} | {' '.join(perfdata)}"


def _ago(taken_at: int, timestamp: int | None) -> str:
    return "never" if timestamp is None else f"{(taken_at - timestamp) / 1000:.0f} s ago"


def render(snapshot: Snapshot, found: list[Problem]):
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
    lease = snapshot.scheduler
    if lease is None:
        figures.add_row("scheduler (beat)", "none yet")
    else:
        left = (lease.expires_timestamp - snapshot.taken_at) / 1000
        state = f"lease {left:.0f} s left" if left >= 0 else f"lease expired {-left:.0f} s ago"
        figures.add_row("scheduler (beat)", f"{lease.holder}, {state}")
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
    level = level_of(found)
    verdict = (
        Text("healthy", style="bold green")
        if not found
        else Text(
            f"UNHEALTHY ({level.name})\n" + "\n".join(f"- {p.reason} [{p.level.name}]" for p in found),
            style="bold red" if level is Level.CRITICAL else "bold yellow",
        )
    )
    return Group(figures, periodic, verdict)
