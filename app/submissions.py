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

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import marshmallow as ma
import sqlalchemy as sa
import sqlalchemy.orm as so

from app.access import Actor, Scope
from app.accounts import ensure_customer
from app.config import Settings
from app.domain_errors import InvalidArgument, InvalidRequest
from app.jobs import service
from app.models import Customer, Job, now_ms
from app.models.jobs import INGESTED
from app.policy import store as policy_store
from app.wire import SHA256_PATTERN, SubmissionPayloadSchema

# Job ids are uuid5(JOB_ID_NAMESPACE, str(submission id)); never change it.
JOB_ID_NAMESPACE = uuid.UUID("6f1d7f3e-5b0c-5b8e-9a57-2f5e0c1c9d41")


class InvalidSubmission(ValueError):
    """The payload is not a submission; `messages` names every bad field (marshmallow's shape)."""

    def __init__(self, messages):
        super().__init__(json.dumps(messages, default=str)[:2000])
        self.messages = messages


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
    """The payload as JSON with every optional field present; InvalidSubmission names what is wrong."""
    if not isinstance(payload, Mapping):
        raise InvalidSubmission({"_schema": ["A submission payload is a JSON object"]})
    try:
        loaded = _PAYLOAD.load(payload)
    except ma.ValidationError as err:
        raise InvalidSubmission(err.messages) from None
    return _PAYLOAD.dump(loaded)


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
    job_id: uuid.UUID | None = None
    created: bool = False
    duplicate: bool = False  # the customer had a job for the sample within the duplicate window: no job made
    errors: dict | None = None  # the payload was invalid and dropped


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
    made = iter(service.create_jobs(session, settings, new_jobs))
    results = []
    for data, duplicate in zip(valid, dropped):
        submission_id = data["submission"]["id"]
        if duplicate:
            results.append(IngestResult(submission_id=submission_id, duplicate=True))
        else:
            job_id, created = next(made)
            results.append(IngestResult(submission_id=submission_id, job_id=job_id, created=created))
    return results


def ingest(session: so.Session, settings: Settings, payload) -> IngestResult:
    """Make the job of one submission (or find the one it already made). The caller commits."""
    return _make_jobs(session, settings, [validate_payload(payload)])[0]


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
            results[n] = IngestResult(submission_id=submission_id_of(payload), errors=err.messages)
    made = _make_jobs(session, settings, [data for _, data in valid])
    results.update((n, result) for (n, _), result in zip(valid, made))
    return [results[n] for n in range(len(payloads))]  # in the payloads' order


def submission_id_of(payload) -> str | None:
    """The submission id a (possibly invalid) payload claims, for log lines."""
    try:
        value = payload["submission"]["id"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(value)[:64]
