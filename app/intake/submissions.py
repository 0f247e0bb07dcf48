"""Submission intake: a sighting of a sample at a customer becomes an analysis job.

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
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import marshmallow as ma
import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert
from marshmallow import fields

from app.operations import metrics
from app.accounts.access import Actor, Scope
from app.accounts.customers import ensure_customer
from app.config import Settings
from app.errors.domain import ArgumentConflict, InvalidArgument, InvalidRequest
from app.jobs import service
from app.models import Customer, Job, PendingSubmission, now_ms
from app.models.jobs import INGESTED
from app.policy import store as policy_store
from app.intake.wire import SHA256_PATTERN, SubmissionPayloadSchema, json_size, unstorable_text

log = logging.getLogger(__name__)

# Job ids are uuid5(JOB_ID_NAMESPACE, str(submission id)); never change it.
JOB_ID_NAMESPACE = uuid.UUID("6f1d7f3e-5b0c-5b8e-9a57-2f5e0c1c9d41")


class InvalidSubmission(ValueError):
    """The payload is not a submission; `messages` names every bad field (marshmallow's shape)."""

    def __init__(self, messages):
        super().__init__(json.dumps(messages, default=str)[:2000])
        self.messages = messages


class SubmissionIdTaken(InvalidSubmission, ArgumentConflict):
    """The submission id belongs to a submission of another customer (ids are idempotency keys of one customer).

    The message says nothing of the other submission: not its job, not its customer."""

    def __init__(self):
        text = "Already used by another submission; choose another id"
        Exception.__init__(self, text)
        self.field = "submission.id"
        self.messages = {"submission": {"id": [text]}}


class SubmissionRejected(InvalidArgument):
    """A REST upload the caller may not make as given; `field` names the culprit."""


class SubmissionIncomplete(InvalidRequest):
    """A REST upload whose fields, as the service filled them in, break a bound (e.g. a long user name)."""


def job_id_for(submission_id: uuid.UUID | str) -> uuid.UUID:
    """The id of the job a submission makes."""
    return uuid.uuid5(JOB_ID_NAMESPACE, str(uuid.UUID(str(submission_id))))


# -- validating ------------------------------------------------------------------------------

_PAYLOAD = SubmissionPayloadSchema()


def validate_payload(payload) -> dict:
    """The payload as JSON with every optional field present; InvalidSubmission names what is wrong.

    A tolerant reader (SPEC 10.2): fields the schemas do not declare, at any depth of the
    submission and classification objects, are kept as received (an upstream upgrade must
    not lose submissions); they only have to be storable. The REST intake is strict: its
    body schema refuses unknown fields before this runs.
    """
    if not isinstance(payload, Mapping):
        raise InvalidSubmission({"_schema": ["A submission payload is a JSON object"]})
    known, unknown = _split_unknown(_PAYLOAD, payload)
    errors = _unknown_errors(_PAYLOAD, unknown)
    try:
        loaded = _PAYLOAD.load(known)
    except ma.ValidationError as err:
        raise InvalidSubmission(_merge_messages(err.messages, errors)) from None
    if errors:
        raise InvalidSubmission(errors)
    dumped = _PAYLOAD.dump(loaded)
    outside = sorted(key for key in unknown if key not in _declared(_PAYLOAD))
    if outside:  # a job keeps a submission and a classification, nothing beside them
        log.warning("submission %s: ignoring unknown top-level fields %s", submission_id_of(payload), outside)
    _merge_unknown(_PAYLOAD, dumped, {k: v for k, v in unknown.items() if k not in outside})
    return dumped


def _declared(schema: ma.Schema) -> dict[str, fields.Field]:
    return {field.data_key or name: field for name, field in schema.load_fields.items()}


def _split_unknown(schema: ma.Schema, data: Mapping) -> tuple[dict, dict]:
    """(declared fields, the rest): the rest keyed as received, nested under their declared parent object."""
    declared = _declared(schema)
    known, unknown = {}, {}
    for key, value in data.items():
        field = declared.get(key)
        if field is None:
            unknown[key] = value
        elif isinstance(field, fields.Nested) and isinstance(value, Mapping):
            known[key], inner = _split_unknown(field.schema, value)
            if inner:
                unknown[key] = inner
        else:
            known[key] = value
    return known, unknown


def _unknown_errors(schema: ma.Schema, unknown: dict) -> dict:
    """Messages for unknown fields the database could not store (as a 412 names a bad field)."""
    declared, errors = _declared(schema), {}
    for key, value in unknown.items():
        if key in declared:
            inner = _unknown_errors(declared[key].schema, value)
            if inner:
                errors[key] = inner
            continue
        try:
            json_size(value)
            if unstorable_text(key) or unstorable_text(value):
                raise ma.ValidationError("Text must not contain NUL characters or unpaired surrogates")
        except ma.ValidationError as err:
            errors[str(key)] = err.messages
    return errors


def _merge_unknown(schema: ma.Schema, dumped: dict, unknown: dict) -> None:
    declared = _declared(schema)
    for key, value in unknown.items():
        if key in declared:
            _merge_unknown(declared[key].schema, dumped[key], value)
        else:
            dumped[key] = value


def _merge_messages(first: dict, second: dict) -> dict:
    merged = dict(first)
    for key, value in second.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_messages(merged[key], value)
        else:
            merged.setdefault(key, value)
    return merged


# -- REST upload ------------------------------------------------------------------------------

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
        return validate_payload(_PAYLOAD.dump({"submission": submission, "classification": classification}))
    except InvalidSubmission as err:
        raise SubmissionIncomplete(f"Submission cannot be completed: {err}") from None


def _may_submit_for(session: so.Session, short_name: str, scope: Scope) -> bool:
    if scope.customer_ids is None:  # an all-customers key; a new customer is created by ingest
        return True
    customer_id = session.scalar(sa.select(Customer.id).where(Customer.short_name == short_name))
    return customer_id is not None and scope.allows(customer_id)


# -- ingest -----------------------------------------------------------------------------------

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


class _Customers:
    """Customers by shortName, looked up once per transaction."""

    def __init__(self, session: so.Session):
        self.session = session
        self._customers: dict[str, Customer] = {}

    def __getitem__(self, short_name: str) -> Customer:
        return self._customers[short_name]

    def load(self, short_names: set[str]) -> None:
        """Look up many customers in one SELECT; the new ones are created in shortName order."""
        found = self.session.scalars(sa.select(Customer).where(Customer.short_name.in_(short_names - set(self._customers))))
        self._customers.update((c.short_name, c) for c in found)
        for short_name in sorted(short_names - set(self._customers)):
            self._customers[short_name] = ensure_customer(self.session, short_name)


def _pair(data: dict, customers: _Customers) -> tuple[str, int]:
    return data["submission"]["sample"]["id"], customers[data["submission"]["customer"]].id


def _recent_pairs(session: so.Session, settings: Settings, pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (sample, customer) pairs with a job enqueued within the duplicate window."""
    cutoff = now_ms() - settings.duplicate_window_seconds * 1000
    rows = session.execute(sa.select(Job.sample_sha256, Job.customer_id).where(
        Job.sample_sha256.in_({sha256 for sha256, _ in pairs}), Job.enqueued_timestamp >= cutoff)).all()
    return {tuple(row) for row in rows} & pairs


def _made_into_jobs(session: so.Session, submission_ids: list[str]) -> set[str]:
    rows = session.scalars(sa.select(Job.submission_id).where(Job.submission_id.in_(submission_ids), sa.text(INGESTED)))
    return {str(r) for r in rows}


def _recently_seen(session: so.Session, settings: Settings, valid: list[dict], customers: _Customers) -> list[bool]:
    """Which submissions the duplicate window drops, under a lock per (sample, customer).

    Under the locks, a submission already made into a job is a repeat (its job is returned as
    ever), and the first new submission of a pair in the batch may make a job, the rest not.
    """
    if not settings.duplicate_window_seconds or not valid:
        return [False] * len(valid)
    pairs = {_pair(data, customers) for data in valid}
    for sha256, customer_id in sorted(pairs):  # one order for every transaction: no deadlock
        service.lock_sample_for_customer(session, sha256, customer_id)
    ids = [data["submission"]["id"] for data in valid]
    seen, repeats = _recent_pairs(session, settings, pairs), _made_into_jobs(session, ids)
    dropped, kept = [], set()
    for data, submission_id in zip(valid, ids):
        pair = _pair(data, customers)
        duplicate = submission_id not in repeats and submission_id not in kept and pair in seen
        if not duplicate:
            kept.add(submission_id)
            seen.add(pair)
        dropped.append(duplicate)
    return dropped


def recently_seen(session: so.Session, settings: Settings, payload: dict) -> bool:
    """Whether the duplicate window drops this (complete) payload; the REST intake's check before queuing.

    Without a lock: two simultaneous uploads may both pass here; ingest checks again under its lock,
    and drops the second one as a duplicate then.
    """
    if not settings.duplicate_window_seconds:
        return False
    submission = payload["submission"]
    customer_id = session.scalar(sa.select(Customer.id).where(Customer.short_name == submission["customer"]))
    if customer_id is None or _made_into_jobs(session, [submission["id"]]):
        return False  # a customer never seen has no job; a retried upload gets its job as ever
    return bool(_recent_pairs(session, settings, {(submission["sample"]["id"], customer_id)}))


def _make_jobs(session: so.Session, settings: Settings, valid: list[dict]) -> list[IngestResult]:
    """Make the jobs of valid payloads (the analysis policy decides their tasks); results in input order."""
    customers = _Customers(session)
    customers.load({data["submission"]["customer"] for data in valid})
    dropped = _recently_seen(session, settings, valid, customers)
    kept = [data for data, duplicate in zip(valid, dropped) if not duplicate]
    new_jobs = [
        service.NewJob(submission=data["submission"], classification=data["classification"],
                       customer_id=customers[data["submission"]["customer"]].id,
                       plan=policy_store.plan_for(session, settings, customers[data["submission"]["customer"]].id,
                                                  data["submission"], data["classification"]),
                       job_id=job_id_for(data["submission"]["id"]))
        for data in kept
    ]
    made = service.create_jobs(session, settings, new_jobs)
    foreign = _made_for_another_customer(session, [(new, job_id) for new, (job_id, created) in zip(new_jobs, made)
                                                    if not created])
    made = iter(made)
    results = []
    for data, duplicate in zip(valid, dropped):
        submission_id = data["submission"]["id"]
        if duplicate:
            results.append(IngestResult(submission_id=submission_id, duplicate=True))
            continue
        job_id, created = next(made)
        if job_id in foreign:
            results.append(IngestResult(submission_id=submission_id, errors=SubmissionIdTaken().messages,
                                        id_taken=True))
        else:
            results.append(IngestResult(submission_id=submission_id, job_id=job_id, created=created))
    created = sum(1 for r in results if r.created)
    duplicate = sum(1 for r in results if r.duplicate)
    refused = sum(1 for r in results if r.id_taken)  # another customer's id: refused like an invalid one
    for outcome, amount in (("created", created), ("duplicate", duplicate), ("invalid", refused),
                            ("existing", len(results) - created - duplicate - refused)):
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
    _forget_pending(session, [data["submission"]["id"]])
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
    _forget_pending(session, [submission_id_of(payload) for payload in payloads])
    made = _make_jobs(session, settings, [data for _, data in valid])
    results.update((n, dataclasses.replace(result, payload=payloads[n])) for (n, _), result in zip(valid, made))
    return [results[n] for n in range(len(payloads))]  # in the payloads' order


def _made_for_another_customer(session: so.Session, existing: list[tuple[service.NewJob, uuid.UUID]]) -> set:
    """Ids of the existing jobs whose submission id came back under another customer (never merged)."""
    if not existing:
        return set()
    owners = dict(session.execute(sa.select(Job.id, Job.customer_id).where(Job.id.in_([j for _, j in existing]))).all())
    return {job_id for new, job_id in existing if owners.get(job_id) != new.customer_id}


def _forget_pending(session: so.Session, submission_ids: list[str | None]) -> None:
    ids = set()
    for submission_id in submission_ids:
        try:
            ids.add(uuid.UUID(str(submission_id)))
        except ValueError:  # an invalid payload's id is not an id; no REST submission waits under it
            continue
    if ids:
        session.execute(sa.delete(PendingSubmission).where(PendingSubmission.submission_id.in_(sorted(ids))))


# -- REST intake: committed before the 202 ------------------------------------------------------

def accept_upload(session: so.Session, payload: dict) -> None:
    """Store a prepared REST submission until a worker makes its job; the caller commits, then answers 202.

    A retry of the same submission (same id, same customer) stores nothing again; the same id
    under another customer raises SubmissionIdTaken."""
    submission_id = uuid.UUID(str(payload["submission"]["id"]))
    customer = payload["submission"]["customer"]
    conn = session.connection()
    owner = _owner_of(conn, submission_id)
    if owner is None:
        stored = conn.execute(_STORE_PENDING, {"submission_id": submission_id, "customer": customer,
                                               "payload": payload, "received_timestamp": now_ms()}).scalar()
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
    sa.select(_customers.c.short_name).join(_jobs, _jobs.c.customer_id == _customers.c.id)
    .where(_jobs.c.submission_id == sa.bindparam("submission_id"), sa.text(INGESTED)),
    sa.select(_pending.c.customer).where(_pending.c.submission_id == sa.bindparam("submission_id")),
).limit(1)
_STORE_PENDING = (pg_insert(_pending).values({name: sa.bindparam(name) for name in
                                               ("submission_id", "customer", "payload", "received_timestamp")})
                  .on_conflict_do_nothing().returning(_pending.c.submission_id))


def pending_payloads(session: so.Session, *, received_before: int, limit: int) -> list[dict]:
    """REST submissions committed before `received_before` and not yet made into jobs, oldest first,
    locked (SKIP LOCKED: two safety nets at once take different rows)."""
    return list(session.scalars(
        sa.select(PendingSubmission.payload).where(PendingSubmission.received_timestamp < received_before)
        .order_by(PendingSubmission.received_timestamp).limit(limit).with_for_update(skip_locked=True)))


def submission_id_of(payload) -> str | None:
    """The submission id a (possibly invalid) payload claims, for log lines."""
    try:
        value = payload["submission"]["id"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(value)[:64]
