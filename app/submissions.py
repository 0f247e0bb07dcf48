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

from typing import TYPE_CHECKING

import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import marshmallow as ma
import sqlalchemy as sa
import sqlalchemy.orm as so
from marshmallow import fields, validate

from app.api.schemas import NAME_MAX, ApiSchema, _unstorable_text
from app.auth import ensure_customer
from app.config import Settings
from app.jobs import service
from app.jobs.service import Scope
from app.models import Customer, now_ms

if TYPE_CHECKING:  # the actor is a snapshot made by app.auth, which imports this module
    from app.auth import Actor

log = logging.getLogger(__name__)

# Job ids are uuid5(JOB_ID_NAMESPACE, str(submission id)); never change it.
JOB_ID_NAMESPACE = uuid.UUID("6f1d7f3e-5b0c-5b8e-9a57-2f5e0c1c9d41")
TLP_LEVELS = ("white", "green", "amber", "red")
JSON_MAX_BYTES = 64 * 1024
LIST_MAX = 10_000
CUSTOMER_NAME_MAX = NAME_MAX  # customers.short_name
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


class InvalidSubmission(ValueError):
    """The payload is not a submission; `messages` names every bad field (marshmallow's shape)."""

    def __init__(self, messages):
        super().__init__(json.dumps(messages, default=str)[:2000])
        self.messages = messages


class SubmissionRejected(ValueError):
    """A REST upload the caller may not make as given; `field` names the culprit."""

    def __init__(self, field: str, text: str):
        super().__init__(text)
        self.field = field


def job_id_for(submission_id: uuid.UUID | str) -> uuid.UUID:
    """The id of the job a submission makes."""
    return uuid.uuid5(JOB_ID_NAMESPACE, str(uuid.UUID(str(submission_id))))


# -- schemas -----------------------------------------------------------------------------------

def _json_size(value) -> bool:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN and Infinity parse in Python but are not JSON, and PostgreSQL refuses them
        raise ma.ValidationError("NaN and Infinity are not JSON numbers") from None
    except RecursionError:
        raise ma.ValidationError("Nested too deeply") from None
    if len(text.encode("utf-8")) > JSON_MAX_BYTES:
        raise ma.ValidationError(f"At most {JSON_MAX_BYTES // 1024} KiB as JSON")
    return True


def _sha256(value: str) -> bool:
    if not SHA256_PATTERN.fullmatch(value):
        raise ma.ValidationError("Not a sha256 hash (64 hexadecimal characters)")
    return True


class Timestamp(fields.Integer):
    """Milliseconds since the epoch: a JSON integer (no fraction, no string, no boolean), not negative."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, validate=validate.Range(0, 2**63 - 1), **kwargs)


def _text(**kwargs) -> fields.String:
    return fields.String(validate=validate.Length(max=NAME_MAX), **kwargs)


def _optional_text() -> fields.String:
    return _text(allow_none=True, load_default=None)


class SampleRefSchema(ApiSchema):
    id = fields.String(required=True, validate=_sha256)


class UserAgentSchema(ApiSchema):
    name = _optional_text()
    version = _optional_text()


class SubmissionSchema(ApiSchema):
    id = fields.UUID(required=True)
    customer = fields.String(required=True, validate=validate.Length(1, CUSTOMER_NAME_MAX),
                             metadata={"description": "shortName of the customer the sample was seen at"})
    sample = fields.Nested(SampleRefSchema, required=True)
    created_by_user = fields.Dict(allow_none=True, load_default=None, validate=_json_size)
    created_timestamp = Timestamp(load_default=now_ms)
    name = _optional_text()
    timestamp = Timestamp(allow_none=True, load_default=None)
    mime_type = _optional_text()
    meta_data = fields.Dict(allow_none=True, load_default=dict, validate=_json_size)
    tlp = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(TLP_LEVELS))
    acl = fields.List(fields.Raw(), allow_none=True, load_default=list,
                      validate=[validate.Length(max=LIST_MAX), _json_size])
    user_agent = fields.Nested(UserAgentSchema, allow_none=True, load_default=None)

    @ma.pre_load
    def lowercase_tlp(self, data, **kwargs):
        if isinstance(data, Mapping) and isinstance(data.get("tlp"), str):
            data = {**data, "tlp": data["tlp"].lower()}
        return data


class ClassificationSchema(ApiSchema):
    sample = fields.String(allow_none=True, load_default=None, validate=_sha256,
                           metadata={"description": "The sample's sha256; set to the submission's when absent"})
    classification_id = fields.UUID(data_key="classificationID", load_default=uuid.uuid4)
    created_timestamp = Timestamp(load_default=now_ms)
    version = _optional_text()
    type = _text(required=True, metadata={"description": "File type, e.g. PE"})
    super_type = _text(required=True, metadata={"description": "e.g. executable, document"})
    arch = _optional_text()
    platform = _optional_text()
    meta = fields.Dict(allow_none=True, load_default=dict, validate=_json_size)


class SubmissionPayloadSchema(ApiSchema):
    """The payload of `sampledb.ingest_submission`: every submission field the seed shows."""

    submission = fields.Nested(SubmissionSchema, required=True)
    classification = fields.Nested(ClassificationSchema, required=True)

    @ma.validates_schema
    def same_sample(self, data, **kwargs):
        given = data["classification"].get("sample")
        if given is not None and given.lower() != data["submission"]["sample"]["id"].lower():
            raise ma.ValidationError({"classification": {"sample": ["Must equal submission.sample.id"]}})

    @ma.post_load
    def normalise(self, data, **kwargs):
        sha256 = data["submission"]["sample"]["id"].lower()
        data["submission"]["sample"]["id"] = sha256
        data["classification"]["sample"] = sha256
        return data


class UploadSubmissionSchema(SubmissionSchema):
    """A REST upload's submission: the service fills id (unless given), customer (unless given),
    sample, createdByUser and createdTimestamp."""

    id = fields.UUID(load_default=None, metadata={"description": "Keep it when retrying: the retry gets the same jobID"})
    customer = fields.String(load_default=None, validate=validate.Length(1, CUSTOMER_NAME_MAX),
                             metadata={"description": "Default: the key's own customer"})
    sample = fields.Nested(SampleRefSchema, load_default=None)
    created_by_user = fields.Dict(allow_none=True, load_default=None, metadata={"description": "Set by the service"})
    created_timestamp = Timestamp(allow_none=True, load_default=None, metadata={"description": "Set by the service"})


class UploadPayloadSchema(ApiSchema):
    """Body of POST /sample/{sha256}/submission."""

    submission = fields.Nested(UploadSubmissionSchema, load_default=lambda: UploadSubmissionSchema().load({}))
    classification = fields.Nested(ClassificationSchema, required=True)


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
            _json_size(value)
            if _unstorable_text(key) or _unstorable_text(value):
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
    """The full payload of a REST upload (body loaded by UploadPayloadSchema) for the ingest task."""
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
    return validate_payload(_PAYLOAD.dump({"submission": submission, "classification": classification}))


def _may_submit_for(session: so.Session, short_name: str, scope: Scope) -> bool:
    if scope.customer_ids is None:  # an all-customers key; a new customer is created by ingest
        return True
    customer_id = session.scalar(sa.select(Customer.id).where(Customer.short_name == short_name))
    return customer_id is not None and scope.allows(customer_id)


# -- ingest -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class IngestResult:
    payload: object  # as received
    submission_id: str | None
    job_id: uuid.UUID | None = None  # None: no job was made (see errors and refusal)
    created: bool = False
    errors: dict | None = None  # the payload is invalid: what is wrong, by field
    refusal: str | None = None  # PostgreSQL refused it


class _Lookups:
    """Customers and matching analysis workers, looked up once per transaction."""

    def __init__(self, session: so.Session, settings: Settings):
        self.session, self.settings = session, settings
        self._customers: dict[str, Customer] = {}
        self._workers: dict[tuple, list[str]] = {}

    def customer(self, short_name: str) -> Customer:
        if short_name not in self._customers:
            # Usually known: one SELECT; ensure_customer (INSERT ... ON CONFLICT) creates a new one race-free.
            known = self.session.scalars(sa.select(Customer).where(Customer.short_name == short_name)).one_or_none()
            self._customers[short_name] = known or ensure_customer(self.session, short_name)
        return self._customers[short_name]

    def load_customers(self, short_names: set[str]) -> None:
        """Look up many customers in one SELECT; the new ones are created in shortName order."""
        found = self.session.scalars(sa.select(Customer).where(Customer.short_name.in_(short_names - set(self._customers))))
        self._customers.update((c.short_name, c) for c in found)
        for short_name in sorted(short_names - set(self._customers)):
            self._customers[short_name] = ensure_customer(self.session, short_name)

    def workers(self, classification: dict) -> list[str]:
        key = tuple(classification.get(c) for c in ("type", "superType", "arch", "platform"))
        if key not in self._workers:
            self._workers[key] = service.workers_for(self.session, classification, self.settings.fallback_worker)
        return self._workers[key]


def _make_job(session: so.Session, settings: Settings, data: dict, lookups: _Lookups) -> tuple[uuid.UUID, bool]:
    submission, classification = data["submission"], data["classification"]
    return service.create_job(
        session, settings, submission=submission, classification=classification,
        customer=lookups.customer(submission["customer"]), workers=lookups.workers(classification),
        job_id=job_id_for(submission["id"]),
    )


def ingest(session: so.Session, settings: Settings, payload) -> tuple[uuid.UUID, bool]:
    """Make the job of one submission (or find the one it already made). The caller commits."""
    return _make_job(session, settings, validate_payload(payload), _Lookups(session, settings))


def ingest_many(session: so.Session, settings: Settings, payloads: list) -> list[IngestResult]:
    """Make the jobs of many submissions in the caller's transaction; invalid payloads are reported, not raised.

    New customers are created in shortName order (and jobs in submission-id order by the job
    service), so two batches with overlapping submissions wait for each other instead of deadlocking.
    """
    results: list[IngestResult] = []
    valid: list[tuple[object, dict]] = []
    for payload in payloads:
        try:
            valid.append((payload, validate_payload(payload)))
        except InvalidSubmission as err:
            results.append(IngestResult(payload, submission_id_of(payload), errors=err.messages))
    lookups = _Lookups(session, settings)
    lookups.load_customers({data["submission"]["customer"] for _, data in valid})
    new_jobs = [
        service.NewJob(submission=data["submission"], classification=data["classification"],
                       customer_id=lookups.customer(data["submission"]["customer"]).id,
                       workers=tuple(lookups.workers(data["classification"])),
                       job_id=job_id_for(data["submission"]["id"]))
        for _, data in valid
    ]
    for (payload, data), (job_id, created) in zip(valid, service.create_jobs(session, settings, new_jobs)):
        results.append(IngestResult(payload, data["submission"]["id"], job_id=job_id, created=created))
    return results


def submission_id_of(payload) -> str | None:
    """The submission id a (possibly invalid) payload claims, for log lines."""
    try:
        value = payload["submission"]["id"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(value)[:64]
