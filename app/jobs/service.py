"""The only code that changes a job: creates it, moves it and its tasks, purges it.

Every change of state goes through `_move_job` / `_move_task`, and every history entry
through `_Changes.record` (creation included): the row change, its history entry and its
outbox message are written in the caller's transaction, so they commit together or not
at all. Changes to an existing job lock its row first (SELECT ... FOR UPDATE), so
concurrent updates are serialised by PostgreSQL instead of racing in Python. The caller
owns the transaction: it commits (or rolls back) the session.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.accounts.access import EVERYONE, Actor, Scope
from app.clock import now_ms
from app.config import Settings
from app.errors.domain import NotFound
from app.jobs.serialize import user_info
from app.jobs.states import (
    JOB_ACTIVE,
    JOB_FINAL,
    TASK_FINAL,
    TASK_STATE_ALIASES,
    TASK_STATE_WHEN_JOB_ENDS,
    Cause,
    JobState,
    Move,
    StateConflict,
    TaskState,
    classify_move,
)
from app.models import Customer, Job, JobHistory, JobTask
from app.models.jobs import INGESTED
from app.operations import metrics
from app.outbox.store import add_message
from app.policy import store as policy_store
from app.policy.evaluate import JobPlan


class JobNotFound(NotFound):
    """No such job, or one of a customer the caller may not see (both answer 404)."""


class TaskNotFound(NotFound):
    """The job has no such task."""


# Advisory lock class of the per-sample-and-customer locks ("SDBS" as a 32-bit integer).
SAMPLE_LOCK_CLASS = 0x53444253


# -- reading -----------------------------------------------------------------------------------


def get_job(session: so.Session, job_id: uuid.UUID, scope: Scope = EVERYONE) -> Job:
    # Tasks joined into the same query: one round trip for the most frequent read of the API.
    stmt = scope.restrict(sa.select(Job).where(Job.id == job_id)).options(so.joinedload(Job.tasks))
    job = session.scalars(stmt).unique().one_or_none()
    if job is None:
        raise JobNotFound(f"Job {job_id} not found")
    return job


def get_task(job: Job, task_id: uuid.UUID) -> JobTask:
    for task in job.tasks:
        if task.id == task_id:
            return task
    raise TaskNotFound(f"Task {task_id} of job {job.id} not found")


def job_history(session: so.Session, job: Job) -> list[JobHistory]:
    return list(session.scalars(sa.select(JobHistory).where(JobHistory.job_id == job.id).order_by(JobHistory.id)))


def _lock_job(session: so.Session, job_id: uuid.UUID, scope: Scope) -> Job:
    """Fetch the job with its row locked until the transaction ends; fresh from the database."""
    stmt = scope.restrict(sa.select(Job).where(Job.id == job_id)).with_for_update(of=Job)
    job = session.scalars(stmt.execution_options(populate_existing=True)).unique().one_or_none()
    if job is None:
        raise JobNotFound(f"Job {job_id} not found")
    return job


# -- creating ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """What create_jobs needs to make one job; `job_id=None` draws a random id.

    `plan` holds the tasks and options the analysis policy decided (app.policy.store.plan_for).
    """

    submission: dict
    classification: dict
    customer_id: int
    plan: JobPlan
    job_id: uuid.UUID | None = None
    sample_size: int | None = None
    reanalysis: bool = False


def lock_sample_for_customer(session: so.Session, sha256: str, customer_id: int) -> None:
    """Serialise, until the transaction ends, whoever decides whether a customer's sample gets a new job."""
    digest = hashlib.blake2b(f"{customer_id}/{sha256.lower()}".encode(), digest_size=4).digest()
    # The two-key form: its lock space is apart from the one-key locks (the outbox relay's).
    session.execute(
        sa.select(sa.func.pg_advisory_xact_lock(SAMPLE_LOCK_CLASS, int.from_bytes(digest, "big", signed=True)))
    )


def create_job(
    session: so.Session,
    settings: Settings,
    *,
    submission: dict,
    classification: dict,
    customer: Customer,
    plan: JobPlan | None = None,
    sample_size: int | None = None,
    actor: Actor | None = None,
    job_id: uuid.UUID | None = None,
) -> tuple[uuid.UUID, bool]:
    """Create the job of a submission with its tasks, history and announcements.

    Idempotent on the submission id through a unique constraint (INSERT ... ON CONFLICT DO
    NOTHING): a repeated submission returns the existing job's id and `False`.
    `job_id` lets the caller choose the id: submission intake derives it from the
    submission id (app.intake.ingest.job_id_for) so the REST answer can name the job
    before a worker has made it. Without a `plan`, the analysis policy as it is now decides.
    """
    if plan is None:
        plan = policy_store.plan_for(session, settings, customer.id, submission, classification)
    new = NewJob(submission, classification, customer.id, plan, job_id, sample_size)
    return create_jobs(session, settings, [new], actor=actor)[0]


def create_jobs(
    session: so.Session,
    settings: Settings,
    new_jobs: Sequence[NewJob],
    *,
    actor: Actor | None = None,
) -> list[tuple[uuid.UUID, bool]]:
    """create_job for many submissions in a handful of statements (bulk intake); results in input order.

    Rows are inserted in submission-id order, so two transactions with overlapping submissions
    wait for each other instead of deadlocking.
    """
    now = now_ms()
    by_submission: dict[uuid.UUID, NewJob] = {}
    for new in new_jobs:
        by_submission.setdefault(uuid.UUID(str(new.submission["id"])), new)
    ordered = sorted(by_submission.items(), key=lambda item: item[0])
    job_ids = {submission_id: new.job_id or uuid.uuid4() for submission_id, new in ordered}
    # One executemany (SQLAlchemy batches it into multi-row INSERTs with RETURNING); the rows
    # ON CONFLICT skips (submissions already made into jobs) return nothing.
    inserted: set[uuid.UUID] = set()
    if ordered:
        inserted.update(
            session.connection()
            .execute(
                pg_insert(Job.__table__)
                .on_conflict_do_nothing(index_elements=["submission_id"], index_where=sa.text(INGESTED))
                .returning(Job.__table__.c.submission_id),
                [
                    dict(
                        id=job_ids[submission_id],
                        state=JobState.ENQUEUED,
                        abort_requested=False,
                        site=settings.site,
                        sample_sha256=new.submission["sample"]["id"].lower(),
                        sample_size=new.sample_size,
                        customer_id=new.customer_id,
                        submission_id=submission_id,
                        submission=new.submission,
                        classification=new.classification,
                        options=new.plan.options_as_json(),
                        reanalysis=new.reanalysis,
                        enqueued_timestamp=now,
                        last_updated_timestamp=now,
                        last_updated_by_user_id=actor.id if actor else None,
                    )
                    for submission_id, new in ordered
                ],
            )
            .scalars()
        )
    existing = [submission_id for submission_id, _ in ordered if submission_id not in inserted]
    if existing:
        job_ids.update(
            session.execute(
                sa.select(Job.submission_id, Job.id).where(Job.submission_id.in_(existing), sa.text(INGESTED))
            ).all()
        )

    task_rows: list[dict] = []
    with _Changes(session, settings, actor, now) as changes:
        for submission_id, new in ordered:
            if submission_id not in inserted:
                continue
            job_id = job_ids[submission_id]
            tasks = [{"id": uuid.uuid4(), "worker": name} for name in new.plan.workers]
            task_rows.extend(
                {
                    "id": t["id"],
                    "job_id": job_id,
                    "worker": t["worker"],
                    "state": TaskState.ENQUEUED,
                    "enqueued_timestamp": now,
                    "last_updated_timestamp": now,
                    "analyses": [],
                }
                for t in tasks
            )
            key = str(job_id)
            add_message(
                session,
                settings.job_topic,
                key,
                {
                    "jobID": key,
                    "submission": new.submission,
                    "classification": new.classification,
                    "tasks": [{"id": str(t["id"]), "worker": t["worker"]} for t in tasks],
                    "options": new.plan.options_as_json(),
                    "reanalysis": new.reanalysis,
                },
            )
            origin = "reanalysis of submission" if new.reanalysis else "submission"
            changes.record(job_id, None, JobState.ENQUEUED, f"Job created from {origin} {new.submission['id']}")
        # Core executemany, not ORM objects: nothing in this transaction reads these rows back.
        if task_rows:
            session.connection().execute(sa.insert(JobTask.__table__), task_rows)
    results = []
    for new in new_jobs:
        submission_id = uuid.UUID(str(new.submission["id"]))
        # A repeat of a submission within one call is not the one that made the job.
        results.append((job_ids[submission_id], submission_id in inserted and by_submission[submission_id] is new))
    return results


# -- changing ----------------------------------------------------------------------------------


def update_job(
    session: so.Session,
    settings: Settings,
    job_id: uuid.UUID,
    *,
    state: str,
    message: str | None,
    actor: Actor | None,
    scope: Scope = EVERYONE,
) -> Job:
    """An analyzer's explicit update of a job; it wins over the tasks' roll-up."""
    job = _lock_job(session, job_id, scope)
    move = classify_move("job", job.state, state)
    if move is Move.REPEAT:
        return job
    with _Changes(session, settings, actor, now_ms()) as changes:
        if move is Move.HEARTBEAT:
            # A heartbeat only says "still alive": no history entry, no event, the message stays.
            changes.touch(job)
        else:
            _move_job(changes, job, JobState(state), message, Cause.API)
    _follow_user_ids(session, job)
    return job


def update_task(
    session: so.Session,
    settings: Settings,
    job_id: uuid.UUID,
    task_id: uuid.UUID,
    *,
    state: str,
    analyses: list[uuid.UUID] | None,
    message: str | None,
    actor: Actor | None,
    scope: Scope = EVERYONE,
) -> JobTask:
    """An analysis worker's report on its task; rolls up into the job."""
    state = TASK_STATE_ALIASES.get(state, state)
    job = _lock_job(session, job_id, scope)
    task = get_task(job, task_id)
    move = classify_move("task", task.state, state)
    if move is Move.REPEAT:
        return task
    with _Changes(session, settings, actor, now_ms()) as changes:
        # Any task report is activity of its job: a job whose tasks report progress never times out.
        changes.touch(job)
        task.last_updated_timestamp = changes.now
        if analyses:
            known = {a["id"] for a in task.analyses or []}
            task.analyses = (task.analyses or []) + [
                {"id": str(a), "analysisScore": None, "userAgent": None} for a in analyses if str(a) not in known
            ]
        if message is not None:
            task.message = message
        if move is Move.CHANGE:
            _move_task(changes, job, task, TaskState(state), message)
            _roll_up(changes, job)
    return task


def request_abort(
    session: so.Session,
    settings: Settings,
    job_id: uuid.UUID,
    *,
    reason: str | None,
    actor: Actor | None,
    scope: Scope = EVERYONE,
) -> Job:
    """Ask for a job to be aborted: at once if nobody works on it yet, else by the analyzer."""
    job = _lock_job(session, job_id, scope)
    if job.state == JobState.ABORTED or (job.abort_requested and job.state in JOB_ACTIVE):
        return job
    if job.state in JOB_FINAL:
        raise StateConflict(f"Cannot change job state from {job.state} to aborted: {job.state} is final")
    with _Changes(session, settings, actor, now_ms()) as changes:
        job.abort_requested = True
        job.abort_requested_timestamp = changes.now
        job.abort_requested_by_user_id = actor.id if actor else None
        job.abort_reason = reason
        if job.state == JobState.ENQUEUED:
            _move_job(changes, job, JobState.ABORTED, reason, Cause.ABORT)
        else:
            changes.touch(job)
            changes.record(
                job.id,
                job.state,
                job.state,
                f"Abort requested: {reason}" if reason else "Abort requested",
                announce=False,
            )
        add_message(
            session,
            settings.abort_topic,
            str(job.id),
            {
                "jobID": str(job.id),
                "sample": {"id": job.sample_sha256},
                "state": job.state,
                "requestedTimestamp": changes.now,
                "requestedByUser": user_info(actor),
                "reason": reason,
            },
        )
    _follow_user_ids(session, job)
    return job


# -- sweeps ------------------------------------------------------------------------------------


def _sweep(
    session: so.Session, settings: Settings, condition, order_by, to_state: JobState, message: str, limit: int
) -> int:
    """Move one bounded batch of matching jobs; rows another sweep holds are skipped, not waited for."""
    stmt = (
        sa.select(Job)
        .where(condition)
        .order_by(order_by)
        .limit(limit)
        .with_for_update(of=Job, skip_locked=True)
        .options(so.lazyload("*"), so.selectinload(Job.tasks))
        .execution_options(populate_existing=True)
    )
    jobs = session.scalars(stmt).all()
    with _Changes(session, settings, None, now_ms()) as changes:
        for job in jobs:
            _move_job(changes, job, to_state, message, Cause.SWEEP)
    return len(jobs)


def sweep_execution_timeouts(session: so.Session, settings: Settings, now: int, limit: int) -> int:
    cutoff = now - settings.execution_timeout_seconds * 1000
    return _sweep(
        session,
        settings,
        sa.and_(Job.state == JobState.EXECUTING, Job.last_updated_timestamp < cutoff),
        Job.last_updated_timestamp,
        JobState.TIMEOUT,
        f"No progress reported for {settings.execution_timeout_seconds} seconds",
        limit,
    )


def sweep_enqueued_timeouts(session: so.Session, settings: Settings, now: int, limit: int) -> int:
    if settings.enqueued_timeout_seconds == 0:
        return 0
    cutoff = now - settings.enqueued_timeout_seconds * 1000
    return _sweep(
        session,
        settings,
        sa.and_(Job.state == JobState.ENQUEUED, Job.enqueued_timestamp < cutoff),
        Job.enqueued_timestamp,
        JobState.TIMEOUT,
        f"Not started within {settings.enqueued_timeout_seconds} seconds",
        limit,
    )


def sweep_unconfirmed_aborts(session: so.Session, settings: Settings, now: int, limit: int) -> int:
    cutoff = now - settings.abort_grace_seconds * 1000
    return _sweep(
        session,
        settings,
        # The bare column (not "IS true"): PostgreSQL proves the partial index ix_jobs_abort_pending only from
        # the predicate's own form "abort_requested AND state IN (...)".
        sa.and_(Job.abort_requested, Job.state.in_(JOB_ACTIVE), Job.abort_requested_timestamp < cutoff),
        Job.abort_requested_timestamp,
        JobState.ABORTED,
        f"Abort not confirmed by the analyzer within {settings.abort_grace_seconds} seconds",
        limit,
    )


# -- retention ---------------------------------------------------------------------------------


def ended_before(horizon: int) -> sa.ColumnElement[bool]:
    """Final jobs that ended before `horizon` (through the index ix_jobs_state_end)."""
    return sa.and_(Job.state.in_(sorted(JOB_FINAL)), Job.end_timestamp < horizon)


def purge_jobs(session: so.Session, horizon: int, limit: int) -> dict[str, int]:
    """Delete up to `limit` final jobs that ended before `horizon`, with their tasks and history; rows
    deleted per table. A job being changed right now (its row locked) is left for the next run."""
    job_ids = session.scalars(
        sa.select(Job.id).where(ended_before(horizon)).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not job_ids:
        return {"jobs": 0, "job_tasks": 0, "job_history": 0}
    # Children first, explicitly: the counts are exact (the foreign keys would cascade silently).
    # Session.execute is typed as returning Result; for a DELETE it is a CursorResult, which has rowcount.
    tasks = cast(
        sa.CursorResult,
        session.execute(
            sa.delete(JobTask).where(JobTask.job_id.in_(job_ids)).execution_options(synchronize_session=False)
        ),
    ).rowcount
    history = cast(
        sa.CursorResult,
        session.execute(
            sa.delete(JobHistory).where(JobHistory.job_id.in_(job_ids)).execution_options(synchronize_session=False)
        ),
    ).rowcount
    jobs = cast(
        sa.CursorResult,
        session.execute(sa.delete(Job).where(Job.id.in_(job_ids)).execution_options(synchronize_session=False)),
    ).rowcount
    return {"jobs": jobs, "job_tasks": tasks, "job_history": history}


# -- the one place a job's or a task's state changes ---------------------------------------------


class _Changes:
    """The changes of one service call: who makes them and when, and the history entries they write.

    Every history entry goes through `record` (a job state change is also announced on the event
    topic); the entries are inserted together when the block ends (Core executemany: creating a
    batch of jobs writes its entries in one round trip), after the rows they describe.
    """

    def __init__(self, session: so.Session, settings: Settings, actor: Actor | None, now: int):
        self.session, self.settings, self.actor, self.now = session, settings, actor, now
        self._history: list[dict] = []

    def __enter__(self) -> _Changes:
        return self

    def __exit__(self, kind, _error, _traceback) -> None:
        if kind is None and self._history:
            self.session.flush()  # the rows the entries describe come first
            self.session.connection().execute(sa.insert(JobHistory.__table__), self._history)

    def touch(self, job: Job) -> None:
        job.last_updated_timestamp = self.now
        if self.actor is not None:
            job.last_updated_by_user_id = self.actor.id

    def record(
        self,
        job_id: uuid.UUID,
        from_state: str | None,
        to_state: str,
        message: str | None,
        *,
        task_id: uuid.UUID | None = None,
        announce: bool = True,
    ) -> None:
        """A history entry; a job state change is also announced on the event topic."""
        actor = self.actor
        self._history.append(
            dict(
                job_id=job_id,
                task_id=task_id,
                timestamp=self.now,
                user_id=actor.id if actor else None,
                from_state=from_state,
                to_state=to_state,
                message=message,
            )
        )
        if announce and task_id is None:
            add_message(
                self.session,
                self.settings.event_topic,
                str(job_id),
                {
                    "jobID": str(job_id),
                    "fromState": from_state,
                    "toState": to_state,
                    "timestamp": self.now,
                    "user": user_info(actor),
                    "message": message,
                },
            )


def _follow_user_ids(session: so.Session, job: Job) -> None:
    """Make the job's *_by_user relationships show the user ids just set (they were loaded before)."""
    session.flush()
    session.expire(job, ["last_updated_by_user", "abort_requested_by_user"])


def _move_job(changes: _Changes, job: Job, to_state: JobState, message: str | None, cause: Cause) -> None:
    """Change the job's state; `cause` labels the transition's metric. A final job's unfinished tasks follow."""
    from_state = job.state
    metrics.count_transition(changes.session, from_state, to_state, cause)
    job.state = to_state
    changes.touch(job)
    if message is not None:
        job.message = message
    if to_state == JobState.EXECUTING and job.start_timestamp is None:
        job.start_timestamp = changes.now
    changes.record(job.id, from_state, to_state, message)
    if to_state in JOB_FINAL:
        job.end_timestamp = changes.now
        for task in job.tasks:
            if task.state not in TASK_FINAL:
                _move_task(changes, job, task, TASK_STATE_WHEN_JOB_ENDS[to_state], f"Job became {to_state}")


def _move_task(changes: _Changes, job: Job, task: JobTask, to_state: TaskState, message: str | None) -> None:
    """Change a task's state (an analyzer's report, or its job ending) and record it in the job's history."""
    from_state = task.state
    task.state = to_state
    task.last_updated_timestamp = changes.now
    if to_state == TaskState.EXECUTING and task.start_timestamp is None:
        task.start_timestamp = changes.now
    if to_state in TASK_FINAL:
        task.end_timestamp = changes.now
    changes.record(job.id, from_state, to_state, message, task_id=task.id)


def _roll_up(changes: _Changes, job: Job) -> None:
    """Derive the job's state from its tasks: first start -> executing; all final -> done/failed/aborted."""
    if job.state not in JOB_ACTIVE:
        return
    states = [t.state for t in job.tasks]
    if job.state == JobState.ENQUEUED and any(s != TaskState.ENQUEUED for s in states):
        # The first task to start (or to report at all, e.g. straight to success) starts the job, so
        # a job that ran has a startTimestamp and its history shows executing before the end.
        _move_job(changes, job, JobState.EXECUTING, None, Cause.TASK)
    if all(s in TASK_FINAL for s in states):
        if job.abort_requested:
            target = JobState.ABORTED
        else:
            target = JobState.DONE if TaskState.SUCCESS in states else JobState.FAILED
        _move_job(changes, job, target, f"All tasks final: {', '.join(sorted(set(states)))}", Cause.TASK)
