"""Dead submissions (SPEC 10.2): a submission that cannot be made into a job is kept, never dropped.

Three ways to die: the payload is invalid (the error lists what a 412 would name), PostgreSQL
refuses it (a refusal retrying cannot fix), or its task was delivered more often than
`ingest_max_deliveries` (it keeps killing its Celery worker process). The payload is kept
exactly as received: as JSONB, or as JSON text where JSONB cannot hold it (a NUL character,
a lone surrogate, NaN). One row per submission id where the payload names a valid one, so
repeated failures count attempts on one row. `retry` ingests a dead submission again (as
idempotent as any ingest) and removes it once it made its job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.clock import now_ms
from app.config import Settings
from app.errors.database import Outcome, outcome_of, refusal_text
from app.errors.fields import flatten
from app.intake import ingest, validation
from app.intake.wire import unstorable_text
from app.models import DeadSubmission, Job
from app.models.jobs import INGESTED
from app.operations import metrics
from app.unit_of_work import unit_of_work

INVALID = "invalid"
REFUSED = "refused"
REDELIVERED = "redelivered"
ERROR_MAX_CHARS = 4000


def invalid_error(messages: dict) -> str:
    """The FIELD_ERROR texts a 412 would give for these validation messages, one per bad field."""
    return "; ".join(text for _, text in flatten(messages))


def record(session: so.Session, payload, *, reason: str, error: str, attempts: int = 1, as_text: bool = False) -> None:
    """Store (or count again) a submission that could not be ingested, in the caller's transaction; a REST
    submission waiting under its id is done with in the same transaction (it is dead, no longer pending).
    `as_text` keeps the payload as JSON text even where JSONB could hold it (a last resort)."""
    now = now_ms()
    as_jsonb = not as_text and _jsonb_can_hold(payload)
    values = {
        "submission_id": _submission_uuid(payload),
        "payload": payload if as_jsonb else None,
        "payload_text": None if as_jsonb else json.dumps(payload, ensure_ascii=True, default=repr),
        "reason": reason,
        "error": _storable(error),
        "attempts": attempts,
        "first_seen": now,
        "last_seen": now,
    }
    statement = pg_insert(DeadSubmission).values(**values)
    if values["submission_id"] is not None:
        table = DeadSubmission.__table__
        statement = statement.on_conflict_do_update(
            index_elements=["submission_id"],
            index_where=table.c.submission_id.is_not(None),
            set_={
                "payload": statement.excluded.payload,
                "payload_text": statement.excluded.payload_text,
                "reason": reason,
                "error": statement.excluded.error,
                "last_seen": now,
                "attempts": table.c.attempts + attempts,
            },
        )
    session.execute(statement)
    ingest.forget_pending(session, [values["submission_id"]])
    metrics.count_submissions(session, "dead")


def listing(session: so.Session, ids: Sequence[int] | None = None) -> Sequence[DeadSubmission]:
    query = sa.select(DeadSubmission).order_by(DeadSubmission.id)
    if ids is not None:
        query = query.where(DeadSubmission.id.in_(ids))
    return session.scalars(query).all()


def payload_of(dead: DeadSubmission):
    """The payload as it was received."""
    return dead.payload if dead.payload_text is None else json.loads(dead.payload_text)


@dataclass(frozen=True)
class RetryResult:
    dead_id: int
    job_id: uuid.UUID | None = None  # made (or found): the dead submission is gone
    error: str | None = None  # still dead, with this error
    duplicate: bool = False  # settled without a job: the customer had one for the sample within the duplicate window


def retry(session: so.Session, settings: Settings, dead: DeadSubmission) -> RetryResult:
    """Ingest a dead submission again, in a unit of work of its own (committed here).

    A database error that is not a refusal of the data (transient, or a bug) is raised with nothing
    changed; an invalid payload or a refusal counts another attempt on the dead row and is returned.
    """
    payload = payload_of(dead)
    try:
        with unit_of_work(session):
            if dead.submission_id is not None:
                # Made into a job meanwhile (the sender sent it again, corrected): nothing to do.
                made = session.scalar(
                    sa.select(Job.id).where(Job.submission_id == dead.submission_id, sa.text(INGESTED))
                )
                if made is not None:
                    _forget(session, dead)
                    return RetryResult(dead.id, job_id=made)
            # A duplicate (the duplicate window drops it) is settled too: the customer's recent job stands for it.
            result = ingest.ingest(session, settings, payload)
            _forget(session, dead)
        return RetryResult(dead.id, job_id=result.job_id, duplicate=result.duplicate)
    except validation.InvalidSubmission as err:
        reason, error = INVALID, invalid_error(err.messages)
    except sa.exc.DBAPIError as err:
        if outcome_of(err) is not Outcome.REFUSED:
            raise
        reason, error = REFUSED, refusal_text(err)
    with unit_of_work(session):
        session.execute(
            sa.update(DeadSubmission)
            .where(DeadSubmission.id == dead.id)
            .values(reason=reason, error=_storable(error), attempts=DeadSubmission.attempts + 1, last_seen=now_ms())
        )
    return RetryResult(dead.id, error=error)


def _forget(session: so.Session, dead: DeadSubmission) -> None:
    session.execute(sa.delete(DeadSubmission).where(DeadSubmission.id == dead.id))


def _storable(text: str) -> str:
    """Error texts may quote the payload: no NUL or lone surrogate may reach a text column."""
    return text[:ERROR_MAX_CHARS].encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _submission_uuid(payload) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(payload["submission"]["id"]))
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None


def _jsonb_can_hold(payload) -> bool:
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return not unstorable_text(payload)
