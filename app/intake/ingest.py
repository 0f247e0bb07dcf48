"""Ingest: valid submissions become analysis jobs, one by one or many in one transaction.

A payload `{"submission": {...}, "classification": {...}}` (SPEC §6.1, shaped as the
seed's creation message) arrives through the Celery task `sampledb.ingest_submission`
or through `POST /sample/{sha256}/submission`. It is validated here, the optional
fields are filled in, and `ingest` makes the job through the job service.

Ingest is idempotent on the submission id without any check-then-insert: the job's
unique submission id decides (INSERT ... ON CONFLICT DO NOTHING in create_job), so a
redelivered or repeated submission returns the job the first one made. The job id
is derived from the submission id (uuid5), so the REST intake can answer with the
job's id before a worker has made the job, and a client's retry gets the same id.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.customers import CustomerCache
from app.clock import now_ms
from app.config import Settings
from app.errors.domain import ArgumentConflict
from app.intake import duplicates
from app.intake.validation import InvalidSubmission, submission_id_of, validate_payload
from app.jobs import service
from app.models import Job, PendingSubmission
from app.operations import metrics
from app.policy import store as policy_store

log = logging.getLogger(__name__)

# Job ids are uuid5(JOB_ID_NAMESPACE, str(submission id)); never change it.
JOB_ID_NAMESPACE = uuid.UUID("6f1d7f3e-5b0c-5b8e-9a57-2f5e0c1c9d41")


class SubmissionIdTaken(InvalidSubmission, ArgumentConflict):
    """The submission id belongs to a submission of another customer (ids are idempotency keys of one customer).

    The message says nothing of the other submission: not its job, not its customer."""

    def __init__(self):
        text = "Already used by another submission; choose another id"
        Exception.__init__(self, text)
        self.field = "submission.id"
        self.messages = {"submission": {"id": [text]}}


def job_id_for(submission_id: uuid.UUID | str) -> uuid.UUID:
    """The id of the job a submission makes."""
    return uuid.uuid5(JOB_ID_NAMESPACE, str(uuid.UUID(str(submission_id))))


@dataclass(frozen=True)
class IngestResult:
    submission_id: str | None
    job_id: uuid.UUID | None = None  # None: no job was made (see duplicate, errors and refusal)
    created: bool = False
    duplicate: bool = False  # the customer had a job for the sample within the duplicate window: no job made
    errors: dict | None = None  # the payload is invalid: what is wrong, by field
    id_taken: bool = False  # its id made a job of another customer (errors says so)
    refusal: str | None = None  # PostgreSQL refused it
    payload: object = None  # as received (ingest_many: a dead submission keeps it)


def _make_jobs(session: so.Session, settings: Settings, valid: list[dict]) -> list[IngestResult]:
    """Make the jobs of valid payloads (the analysis policy decides their tasks); results in input order."""
    customers = CustomerCache(session)
    customers.load({data["submission"]["customer"] for data in valid})
    dropped = duplicates.dropped_in_batch(session, settings, valid, customers)
    kept = [data for data, duplicate in zip(valid, dropped) if not duplicate]
    new_jobs: list[service.NewJob] = []
    if kept:  # the policy read once for the whole batch
        plan = policy_store.planner(session, settings)
        new_jobs = [
            service.NewJob(
                submission=data["submission"],
                classification=data["classification"],
                customer_id=customers[data["submission"]["customer"]].id,
                plan=plan(customers[data["submission"]["customer"]].id, data["submission"], data["classification"]),
                job_id=job_id_for(data["submission"]["id"]),
            )
            for data in kept
        ]
    made = service.create_jobs(session, settings, new_jobs)
    foreign = _made_for_another_customer(
        session, [(new, job_id) for new, (job_id, created) in zip(new_jobs, made) if not created]
    )
    remaining = iter(made)
    results = []
    for data, duplicate in zip(valid, dropped):
        submission_id = data["submission"]["id"]
        if duplicate:
            results.append(IngestResult(submission_id=submission_id, duplicate=True))
            continue
        job_id, created = next(remaining)
        if job_id in foreign:
            results.append(
                IngestResult(submission_id=submission_id, errors=SubmissionIdTaken().messages, id_taken=True)
            )
        else:
            results.append(IngestResult(submission_id=submission_id, job_id=job_id, created=created))
    counts = {
        "created": sum(1 for r in results if r.created),
        "duplicate": sum(1 for r in results if r.duplicate),
        "invalid": sum(1 for r in results if r.id_taken),  # another customer's id: refused like an invalid one
    }
    counts["existing"] = len(results) - sum(counts.values())
    for outcome, amount in counts.items():
        metrics.count_submissions(session, outcome, amount)
    return results


def ingest(session: so.Session, settings: Settings, payload) -> IngestResult:
    """Make the job of one submission (or find the one it already made). The caller commits.

    InvalidSubmission for a payload that is not a submission; SubmissionIdTaken (one of them)
    when its id already made a job of another customer."""
    try:
        data = validate_payload(payload)
    except InvalidSubmission:
        metrics.count_submissions(None, "invalid")
        raise
    forget_pending(session, [data["submission"]["id"]])
    result = _make_jobs(session, settings, [data])[0]
    if result.id_taken:
        raise SubmissionIdTaken()
    return result


def ingest_many(session: so.Session, settings: Settings, payloads: list) -> list[IngestResult]:
    """Make the jobs of many submissions in the caller's transaction, one result per payload in their order;
    invalid payloads are reported, not raised.

    New customers are created in shortName order (and jobs in submission-id order by the job
    service), so two batches with overlapping submissions wait for each other instead of deadlocking.
    """
    results: dict[int, IngestResult] = {}
    valid: list[tuple[int, dict]] = []
    for n, payload in enumerate(payloads):
        try:
            valid.append((n, validate_payload(payload)))
        except InvalidSubmission as err:
            results[n] = IngestResult(submission_id=submission_id_of(payload), errors=err.messages, payload=payload)
    metrics.count_submissions(session, "invalid", len(results))
    # A REST submission waiting to be made is done with (made or refused) in this transaction; its row
    # is locked before any job row, in the order the safety net locks them too, so the two never deadlock.
    forget_pending(session, [submission_id_of(payload) for payload in payloads])
    made = _make_jobs(session, settings, [data for _, data in valid])
    results.update((n, dataclasses.replace(result, payload=payloads[n])) for (n, _), result in zip(valid, made))
    return [results[n] for n in range(len(payloads))]  # in the payloads' order


def _made_for_another_customer(session: so.Session, existing: list[tuple[service.NewJob, uuid.UUID]]) -> set:
    """Ids of the existing jobs whose submission id came back under another customer (never merged)."""
    if not existing:
        return set()
    owners = dict(session.execute(sa.select(Job.id, Job.customer_id).where(Job.id.in_([j for _, j in existing]))).all())
    return {job_id for new, job_id in existing if owners.get(job_id) != new.customer_id}


def forget_pending(session: so.Session, submission_ids: Sequence[object]) -> None:
    """The REST submissions of these ids are done with (made into jobs, or stored dead) in this transaction."""
    ids = _ids(submission_ids)
    if ids:
        session.execute(sa.delete(PendingSubmission).where(PendingSubmission.submission_id.in_(ids)))


def _ids(submission_ids: Sequence[object]) -> list[uuid.UUID]:
    ids = set()
    for submission_id in submission_ids:
        try:
            ids.add(uuid.UUID(str(submission_id)))
        except ValueError:  # an invalid payload's id is not an id; no REST submission waits under it
            continue
    return sorted(ids)


def claim_pending(session: so.Session, *, limit: int, claim_ms: int) -> list[tuple[dict, int]]:
    """Claim for `claim_ms` the oldest REST submissions not yet made into jobs and not claimed by another
    worker (or whose claim ran out: that worker died or was cut off mid-batch), each with its attempts
    counted, this one included: (payload, attempts), oldest first. The caller commits the claim before the
    work, so a process that dies on a row leaves it counted and, once the claim runs out, to the others.
    SKIP LOCKED: two workers claiming at once take different rows."""
    table = PendingSubmission.__table__
    now = now_ms()
    free = sa.or_(table.c.claimed_until_timestamp.is_(None), table.c.claimed_until_timestamp < now)
    due = (
        sa.select(table.c.submission_id)
        .where(free)
        .order_by(table.c.received_timestamp)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        sa.update(table)
        .where(table.c.submission_id.in_(due.scalar_subquery()))
        .values(attempts=table.c.attempts + 1, claimed_until_timestamp=now + claim_ms)
        .returning(table.c.payload, table.c.attempts, table.c.received_timestamp)
    ).all()
    return [(payload, attempts) for payload, attempts, _ in sorted(rows, key=lambda row: row[2])]


def uncount_pending(session: so.Session, submission_ids: Sequence[object]) -> None:
    """Take back the attempt and the claim of submissions whose ingest did not happen for a reason of the
    database's (away, busy): only attempts that died with their process count toward storing a pending
    submission dead, and the next worker need not wait for the claim to run out."""
    ids = _ids(submission_ids)
    if ids:
        table = PendingSubmission.__table__
        session.execute(
            sa.update(table)
            .where(table.c.submission_id.in_(ids), table.c.attempts > 0)
            .values(attempts=table.c.attempts - 1, claimed_until_timestamp=None)
        )
