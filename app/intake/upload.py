"""The REST intake (POST /sample/{sha256}/submission): the body completed into a payload, checked
against the duplicate window and committed to pending_submissions before the answer (SPEC §10.4)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.accounts.access import Actor, Scope
from app.clock import now_ms
from app.config import Settings
from app.errors.domain import InvalidArgument, InvalidRequest
from app.intake import duplicates, trigger
from app.intake.ingest import SubmissionIdTaken, job_id_for
from app.intake.validation import PAYLOAD_SCHEMA, InvalidSubmission, validate_payload
from app.intake.wire import SHA256_PATTERN
from app.models import Customer, Job, PendingSubmission
from app.models.jobs import INGESTED
from app.unit_of_work import unit_of_work

log = logging.getLogger(__name__)


class SubmissionRejected(InvalidArgument):
    """A REST upload the caller may not make as given; `field` names the culprit."""


class SubmissionIncomplete(InvalidRequest):
    """A REST upload whose fields, as the service filled them in, break a bound (e.g. a long user name)."""


def prepare_upload(session: so.Session, *, sha256: str, body: dict, user: Actor, scope: Scope) -> dict:
    """The full payload of a REST upload (body loaded by app.api's UploadPayloadSchema) for the ingest task."""
    if not SHA256_PATTERN.fullmatch(sha256):
        raise SubmissionRejected("sha256", "Not a sha256 hash (64 hexadecimal characters)")
    sha256 = sha256.lower()
    submission, classification = dict(body["submission"]), dict(body["classification"])
    if submission.get("sample") and submission["sample"]["id"].lower() != sha256:
        raise SubmissionRejected("submission.sample.id", "Must equal the sha256 in the path")
    if classification.get("sample") and classification["sample"].lower() != sha256:
        raise SubmissionRejected("classification.sample", "Must equal the sha256 in the path")
    customer = submission.get("customer")
    if customer is None:
        customer = user.customer_short_name
    elif not _may_submit_for(session, customer, scope):
        raise SubmissionRejected("submission.customer", f"Not a customer this key may submit for: {customer}")
    submission.update(
        id=submission.get("id") or uuid.uuid4(),
        customer=customer,
        sample={"id": sha256},
        created_by_user={**user.to_info(), "domain": None},
        created_timestamp=now_ms(),
    )
    classification["sample"] = sha256
    try:
        return validate_payload(PAYLOAD_SCHEMA.dump({"submission": submission, "classification": classification}))
    except InvalidSubmission as err:
        raise SubmissionIncomplete(f"Submission cannot be completed: {err}") from None


def _may_submit_for(session: so.Session, short_name: str, scope: Scope) -> bool:
    if scope.customer_ids is None:  # an all-customers key; a new customer is created by ingest
        return True
    customer_id = session.scalar(sa.select(Customer.id).where(Customer.short_name == short_name))
    return customer_id is not None and scope.allows(customer_id)


def accept_upload(session: so.Session, payload: dict, *, id_chosen_here: bool = False) -> None:
    """Store a prepared REST submission until a worker makes its job; the caller commits, then answers 202.

    A retry of the same submission (same id, same customer) stores nothing again; the same id
    under another customer raises SubmissionIdTaken. An id the service chose (a new uuid4) belongs
    to nothing yet: it is stored without looking for an owner, one round trip fewer."""
    submission_id = uuid.UUID(str(payload["submission"]["id"]))
    customer = payload["submission"]["customer"]
    conn = session.connection()
    owner = None if id_chosen_here else _owner_of(conn, submission_id)
    if owner is None:
        stored = conn.execute(
            _STORE_PENDING,
            {"submission_id": submission_id, "customer": customer, "payload": payload, "received_timestamp": now_ms()},
        ).scalar()
        if stored is not None:
            return
        owner = _owner_of(conn, submission_id)  # a concurrent request with this id committed first
    if owner != customer:
        raise SubmissionIdTaken()


def _owner_of(conn: sa.Connection, submission_id: uuid.UUID) -> str | None:
    """The customer shortName of the job or waiting REST submission that has this id, if any."""
    return conn.execute(_OWNER, {"submission_id": submission_id}).scalar()


# The intake's two statements, built once: Core on the tables (no ORM execution), so each request pays
# neither building them nor SQLAlchemy's cache key of a new statement.
_jobs, _customers, _pending = Job.__table__, Customer.__table__, PendingSubmission.__table__
# _owner_of's statement. Only the ingested job counts (a reanalysis job repeats its original's id and
# customer); saying so is also what lets PostgreSQL use the partial unique index on submission_id
# instead of scanning jobs.
_OWNER = sa.union_all(
    sa.select(_customers.c.short_name)
    .join(_jobs, _jobs.c.customer_id == _customers.c.id)
    .where(_jobs.c.submission_id == sa.bindparam("submission_id"), sa.text(INGESTED)),
    sa.select(_pending.c.customer).where(_pending.c.submission_id == sa.bindparam("submission_id")),
).limit(1)
_STORE_PENDING = (
    pg_insert(_pending)
    .values({name: sa.bindparam(name) for name in ("submission_id", "customer", "payload", "received_timestamp")})
    .on_conflict_do_nothing()
    .returning(_pending.c.submission_id)
)


# -- the REST intake's sequence ---------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """Stored: the submission as the service completed it, and the id of the job it makes."""

    submission: dict
    job_id: uuid.UUID


@dataclass(frozen=True)
class RecentlySeen:
    """The customer sent this sample within the duplicate window: nothing stored, no job."""

    sha256: str


def submit(
    session: so.Session, settings: Settings, *, sha256: str, body: dict, user: Actor, scope: Scope
) -> Accepted | RecentlySeen:
    """A REST upload from its loaded body to its answer: completed into a payload, checked against the
    duplicate window, committed to pending_submissions (only then is it Accepted), then a worker woken to
    make its job (no Celery message of its own: SPEC 13.3). A broker or Redis that is away is logged, not
    answered: beat's `sampledb.ingest_pending` makes the job of a committed submission nobody woke for."""
    with unit_of_work(session):
        payload = prepare_upload(session, sha256=sha256, body=body, user=user, scope=scope)
        if duplicates.recently_seen(session, settings, payload):
            return RecentlySeen(payload["submission"]["sample"]["id"])
        accept_upload(session, payload, id_chosen_here=not body["submission"].get("id"))
    try:
        trigger.trigger_ingest(settings)
    except Exception as err:
        log.warning(
            "submission %s stored; its job waits for beat's safety net (wake-up failed: %s)",
            payload["submission"]["id"],
            type(err).__name__,
        )
    submission = payload["submission"]
    return Accepted(submission, job_id_for(submission["id"]))
