"""Celery tasks: submission ingest, the outbox relay and the timeout sweeps.

Every task is idempotent (acks_late re-delivers it when a worker dies): ingest through
the job's unique submission id, the relay through row claims and the sweeps through
SKIP LOCKED and their state conditions. A payload that is not a submission is logged
and dropped (retrying cannot fix it); a database that is away is retried with back-off.
"""

from __future__ import annotations

import logging

import sqlalchemy.exc as sa_exc
from celery.exceptions import MaxRetriesExceededError
from celery.utils.time import get_exponential_backoff_interval

from app import dispatch, submissions
from app.extensions import current_settings, db
from app.jobs import service
from app.models import now_ms
from app.task_names import TaskNames
from app.unit_of_work import unit_of_work
from workers import batching, relay
from workers.celery_app import FlaskTask, celery

log = logging.getLogger(__name__)

# The database went away, a connection broke, a deadlock or serialisation failure: try again later.
TRANSIENT_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)
RETRY = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": 1, "retry_backoff_max": 60, "retry_jitter": True}
# Submissions one ingest transaction takes at most; the worker's prefetch grows by as many.
INGEST_BATCH_SIZE = 100
RELAY_BUDGET_SECONDS = 10.0
# A relay that finds another one mid-batch tries again this soon: rows committed after that one read the
# outbox wait for it, and on the hot path that wait is their latency.
RELAY_BUSY_RETRY_SECONDS = 0.05


# -- ingest -----------------------------------------------------------------------------------

class _IngestInBatches(FlaskTask):
    """sampledb.ingest_submission: one payload per message, the messages a worker takes ingested together."""

    Strategy = "workers.batching:batching_strategy"
    batch_size = INGEST_BATCH_SIZE

    def run_batch(self, messages: list[batching.Message]) -> list[dict] | None:
        """Each message's outcome, as ingest_submission returns it (None: the batch is retried later)."""
        payloads = [m.args[0] if len(m.args) == 1 and not m.kwargs else m.kwargs.get("payload") for m in messages]
        try:
            results = _ingest_batch(payloads)
        except Exception as err:
            if not isinstance(err, TRANSIENT_ERRORS):  # as for a failed task: logged, acknowledged, not retried
                log.exception("ingest of %d submissions failed; dropping them", len(messages))
                return None
            # As autoretry would: each message again later, with its own back-off; these are acknowledged.
            log.warning("ingest of %d submissions failed; retrying them later", len(messages), exc_info=True)
            for message, payload in zip(messages, payloads):
                self.apply_async(args=[payload], retries=message.retries + 1,
                                 countdown=get_exponential_backoff_interval(1, message.retries + 1, 60, True))
            return None
        _log_dropped(results)
        return [_outcome(result) for result in results]


def _outcome(result: submissions.IngestResult) -> dict:
    if result.errors is not None:
        return {"dropped": True, "errors": result.errors}
    if result.duplicate:
        return {"duplicate": True, "submissionID": result.submission_id}
    return {"jobID": str(result.job_id), "created": result.created}


@celery.task(name=TaskNames.INGEST_SUBMISSION, base=_IngestInBatches, max_retries=None, **RETRY)
def ingest_submission(payload) -> dict:
    """Make the job of one submission (the sample service's contract: one payload argument).

    A worker runs these messages through `run_batch`; this body serves direct and eager calls."""
    try:
        with unit_of_work(db.session) as session:
            result = submissions.ingest(session, current_settings(), payload)
    except submissions.InvalidSubmission as err:
        log.error("dropping invalid submission %s: %s", submissions.submission_id_of(payload), err.messages)
        return {"dropped": True, "errors": err.messages}
    if result.duplicate:
        log.info("submission %s: its sample was seen recently, no job made", result.submission_id)
    return _outcome(result)


@celery.task(name=TaskNames.INGEST_SUBMISSIONS, max_retries=None, **RETRY)
def ingest_submissions(payloads) -> dict:
    """Make the jobs of a list of submissions in one transaction (bulk intake); invalid ones are dropped."""
    if not isinstance(payloads, list):
        log.error("dropping a bulk ingest whose argument is not a list: %s", type(payloads).__name__)
        return {"dropped": 1, "created": 0, "existing": 0, "duplicate": 0}
    results = _ingest_batch(payloads)
    dropped = _log_dropped(results)
    created = sum(1 for r in results if r.created)
    duplicate = sum(1 for r in results if r.duplicate)
    return {"created": created, "existing": len(results) - dropped - created - duplicate,
            "duplicate": duplicate, "dropped": dropped}


def _ingest_batch(payloads: list) -> list[submissions.IngestResult]:
    """Ingest in one transaction; if PostgreSQL refuses something validation let through, one transaction
    per submission, so only the culprit is dropped, not its batch. Transient errors propagate."""
    try:
        with unit_of_work(db.session) as session:
            return submissions.ingest_many(session, current_settings(), payloads)
    except TRANSIENT_ERRORS:
        raise
    except sa_exc.DBAPIError:
        log.warning("bulk ingest of %d submissions failed; ingesting them one by one", len(payloads), exc_info=True)
        return [result for payload in payloads for result in _ingest_alone(payload)]


def _log_dropped(results: list[submissions.IngestResult]) -> int:
    dropped = [r for r in results if r.errors is not None]
    for result in dropped:
        log.error("dropping invalid submission %s: %s", result.submission_id, result.errors)
    return len(dropped)


def _ingest_alone(payload) -> list[submissions.IngestResult]:
    try:
        with unit_of_work(db.session) as session:
            return submissions.ingest_many(session, current_settings(), [payload])
    except TRANSIENT_ERRORS:
        raise
    except sa_exc.DBAPIError as err:
        return [submissions.IngestResult(submission_id=submissions.submission_id_of(payload),
                                         errors={"_database": [str(err.orig or err)[:500]]})]


# -- outbox relay -----------------------------------------------------------------------------

@celery.task(name=TaskNames.RELAY_OUTBOX, bind=True, max_retries=3, **RETRY)
def relay_outbox(self, triggered: bool = False) -> dict:
    """Send due outbox rows to Kafka; `triggered` by a commit (vs. beat's safety net)."""
    settings = current_settings()
    outcome = relay.relay_outbox(db.session, settings, budget_seconds=RELAY_BUDGET_SECONDS,
                                 on_first_lock=lambda: dispatch.relay_started(settings.redis_url))
    if outcome.busy and triggered:
        # Another relay is mid-batch; it may finish before reading the rows that triggered us.
        try:
            raise self.retry(countdown=RELAY_BUSY_RETRY_SECONDS, max_retries=round(60 / RELAY_BUSY_RETRY_SECONDS))
        except MaxRetriesExceededError:
            log.warning("relay lock busy for a minute; beat's safety net takes over")
    try:
        if outcome.more:
            dispatch.send_relay(settings.redis_url)
        elif outcome.failed:
            due_in = relay.next_attempt_in_ms(db.session)
            if due_in is not None:
                dispatch.schedule_relay_retry(settings.redis_url, countdown=max(0.1, due_in / 1000))
    except Exception:  # the rows wait in the outbox; beat's safety net relays them
        log.warning("could not schedule the next relay", exc_info=True)
    if outcome.sent or outcome.failed:
        log.info("outbox relay: %s", outcome)
    return {"sent": outcome.sent, "failed": outcome.failed, "busy": outcome.busy, "lagMs": outcome.lag_ms}


# -- sweeps -----------------------------------------------------------------------------------

def _sweep(sweep) -> int:
    """Run a service sweep batch by batch, one transaction each, until a batch comes back short."""
    settings = current_settings()
    total = 0
    while True:
        with unit_of_work(db.session) as session:
            moved = sweep(session, settings, now_ms(), settings.sweep_batch_size)
        total += moved
        if moved < settings.sweep_batch_size:
            return total


@celery.task(name=TaskNames.SWEEP_EXECUTION_TIMEOUTS, max_retries=3, **RETRY)
def sweep_execution_timeouts() -> int:
    """Time out executing jobs whose analyzer went silent."""
    return _sweep(service.sweep_execution_timeouts)


@celery.task(name=TaskNames.SWEEP_ENQUEUED_TIMEOUTS, max_retries=3, **RETRY)
def sweep_enqueued_timeouts() -> int:
    """Time out jobs nobody started."""
    return _sweep(service.sweep_enqueued_timeouts)


@celery.task(name=TaskNames.SWEEP_UNCONFIRMED_ABORTS, max_retries=3, **RETRY)
def sweep_unconfirmed_aborts() -> int:
    """Abort jobs whose analyzer did not confirm an abort request in time."""
    return _sweep(service.sweep_unconfirmed_aborts)
