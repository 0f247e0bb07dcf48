"""Celery tasks: submission ingest, the outbox relay, the timeout sweeps and retention.

Every task is idempotent (acks_late re-delivers it when a worker dies): ingest through
the job's unique submission id, the relay through row claims and the sweeps through
SKIP LOCKED and their state conditions. What a failure means is decided in one place
(app.errors.database by SQLSTATE, `_failure_outcome` here): a database that is away,
busy or read-only is retried with back-off; a submission that cannot be ingested
otherwise (invalid, refused by PostgreSQL, or delivered too often because it keeps
killing its worker process) is stored as a dead submission and acknowledged: never
retried in a loop, never dropped. Any other error is a bug and propagates.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import sqlalchemy.exc as sa_exc
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

import celeryconfig
from app.clock import now_ms
from app.errors.database import TRANSIENT_ERROR_CLASSES, Outcome, outcome_of, refusal_text
from app.extensions import current_settings, db
from app.intake import dead_submissions, ingest, validation
from app.intake import trigger as intake_trigger
from app.jobs import service
from app.operations import retention, sweep_runs
from app.outbox import trigger
from app.task_names import TaskNames
from app.unit_of_work import unit_of_work
from workers import batching, deliveries, relay
from workers.celery_app import FlaskTask, celery

log = logging.getLogger(__name__)

# The database went away, a connection broke, a statement or lock timed out, a deadlock or
# serialisation failure, or the task outlived its soft time limit (a hung database): try again later.
# (Only errors app.errors.database calls transient reach autoretry; the others are handled in the task.)
RETRY = {
    "autoretry_for": (*TRANSIENT_ERROR_CLASSES, SoftTimeLimitExceeded),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}
# Submissions one ingest transaction takes at most; the worker's prefetch grows by as many.
INGEST_BATCH_SIZE = celeryconfig.INGEST_BATCH_SIZE
RELAY_BUDGET_SECONDS = 10.0
# Well inside the soft time limit; what is left waits for the next run.
PURGE_BUDGET_SECONDS = 40.0
# A woken drain of the pending REST submissions gives the wake-up flag up after this long (well inside the
# soft time limit and the flag's expiry); it waits PENDING_LINGER_SECONDS after a claim that found less than
# a batch, so rows are made in batches without holding a submission up for long, and gives the flag up once
# its claims found nothing for PENDING_IDLE_SECONDS, so a stream with gaps is not a Celery message each. A
# quarter second: a stream sparser than 4 submissions/s costs a message per submission, which at that rate
# costs nothing, and a pool process is not held a whole second after every burst.
PENDING_BUDGET_SECONDS = 10.0
PENDING_LINGER_SECONDS = 0.05
PENDING_IDLE_SECONDS = 0.25


@contextmanager
def _transaction():
    """A task's unit of work. A soft time limit that struck inside the database driver stays a time
    limit, retried, even when the driver answered it with an error of its own (e.g. psycopg's
    "connection in transaction status ACTIVE"): never a failure that acknowledges the work away."""
    try:
        with unit_of_work(db.session) as session:
            yield session
    except Exception as err:
        if not isinstance(err, SoftTimeLimitExceeded) and _time_limit_in(err):
            raise SoftTimeLimitExceeded() from err
        raise


def _time_limit_in(error: BaseException | None) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SoftTimeLimitExceeded):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


# -- ingest -----------------------------------------------------------------------------------


def _bury(payloads: list, reason: str, error: str, attempts: int = 1) -> None:
    """Store submissions as dead (one transaction) and say so in the log."""

    def store(as_text: bool) -> None:
        with unit_of_work(db.session) as session:
            for payload in payloads:
                dead_submissions.record(
                    session, payload, reason=reason, error=error, attempts=attempts, as_text=as_text
                )

    try:
        store(as_text=False)
    except sa_exc.DBAPIError as err:
        if outcome_of(err) is not Outcome.REFUSED:
            raise
        # PostgreSQL refused the payload as JSONB in a way the check before did not foresee: keep its text.
        log.warning("storing a dead submission as JSONB failed (%s); storing its JSON text", refusal_text(err)[:200])
        store(as_text=True)
    for payload in payloads:
        log.error("dead submission %s (%s): %s", validation.submission_id_of(payload), reason, error[:500])


def _counted(task, payloads: list, work):
    """Run `work()` unless this delivery is one too many: then the payloads are stored dead instead."""
    settings = current_settings()
    delivery = deliveries.count(settings, task.request)
    try:
        if delivery > settings.ingest_max_deliveries:
            _bury_redelivered(payloads, delivery)
            return {"dead": len(payloads)}
        return work()
    finally:
        deliveries.forget(settings, task.request)


def _bury_redelivered(payloads: list, delivery: int) -> None:
    _bury(
        payloads,
        dead_submissions.REDELIVERED,
        f"delivered {delivery} times: its Celery worker process died at each of the first "
        f"{delivery - 1} (killed, out of memory or crashed)",
        attempts=delivery - 1,
    )


def _failure_outcome(error: BaseException) -> Outcome | None:
    """The one classification of a task's failure: RETRY (the database away, busy or read-only, or the
    task's time limit struck: a hung database), REFUSED (PostgreSQL refused the data for good: the
    submissions become dead), None (a bug of ours: it propagates)."""
    return Outcome.RETRY if isinstance(error, SoftTimeLimitExceeded) else outcome_of(error)


class _IngestInBatches(FlaskTask):
    """sampledb.ingest_submission: one payload per message, the messages a worker takes ingested together."""

    Strategy = "workers.batching:batching_strategy"
    batch_size = INGEST_BATCH_SIZE

    def run_batch(self, messages: list[batching.Message]) -> list[dict]:
        """Each message's outcome, as ingest_submission returns it; returning acknowledges them all.

        Deliveries are counted first, where a dying process cannot lose the count. A message
        delivered again was in a batch whose pool process died: it is ingested alone, so a payload
        that kills its process takes no batch-mate down a second time, and is stored dead once it
        has been delivered more than SAMPLEDB_INGEST_MAX_DELIVERIES times.
        """
        settings = current_settings()
        counts = deliveries.count_many(settings, messages)
        try:
            outcomes = {
                n: self._ingest_redelivered(messages[n], count, settings.ingest_max_deliveries)
                for n, count in enumerate(counts)
                if count > 1
            }
            fresh = [n for n, count in enumerate(counts) if count == 1]
            if fresh:
                outcomes.update(zip(fresh, self._ingest_together([messages[n] for n in fresh])))
            return [outcomes[n] for n in range(len(messages))]
        finally:
            deliveries.forget_many(settings, messages)

    def _ingest_together(self, messages: list[batching.Message]) -> list[dict]:
        payloads = [_payload_of(message) for message in messages]
        try:
            results = _ingest_batch(payloads)
        except Exception as err:
            return self._after_failure(err, messages, payloads)
        _tally(results)
        return [_outcome(result) for result in results]

    def _ingest_redelivered(self, message: batching.Message, delivery: int, max_deliveries: int) -> dict:
        payload = _payload_of(message)
        if delivery > max_deliveries:
            _bury_redelivered([payload], delivery)
            return {"dead": 1}
        try:
            return _ingest_one(payload)
        except Exception as err:
            return self._after_failure(err, [message], [payload])[0]

    def _after_failure(self, error: Exception, messages: list[batching.Message], payloads: list) -> list[dict]:
        """A database away or a time limit: each message again later with its own back-off, as autoretry
        would (these deliveries are acknowledged). Data PostgreSQL refused is stored dead. Any other error
        is a bug of ours and propagates: the batch is requeued, its messages ingested alone when
        redelivered, and a message that keeps failing is stored dead as redelivered, never as refused."""
        outcome = _failure_outcome(error)
        if outcome is Outcome.RETRY:
            log.warning("ingest of %d submissions failed; retrying them later", len(messages), exc_info=True)
            for message, payload in zip(messages, payloads):
                self.apply_async(
                    args=[payload],
                    retries=message.retries + 1,
                    countdown=get_exponential_backoff_interval(1, message.retries + 1, 60, True),
                )
            return [{"retried": True}] * len(messages)
        if outcome is None:
            raise error
        log.error("ingest of %d submissions refused: %s", len(messages), refusal_text(error)[:500])
        _bury(payloads, dead_submissions.REFUSED, refusal_text(error))
        return [{"dead": 1}] * len(messages)


def _payload_of(message: batching.Message):
    return message.args[0] if len(message.args) == 1 and not message.kwargs else message.kwargs.get("payload")


def _outcome(result: ingest.IngestResult) -> dict:
    """One submission's outcome, as ingest_submission returns it."""
    if result.errors is not None or result.refusal is not None:
        return {"dead": 1}
    if result.duplicate:
        return {"duplicate": True, "submissionID": result.submission_id}
    return {"jobID": str(result.job_id), "created": result.created}


@celery.task(name=TaskNames.INGEST_SUBMISSION, base=_IngestInBatches, bind=True, max_retries=None, **RETRY)
def ingest_submission(self, payload) -> dict:
    """Make the job of one submission (the sample service's contract: one payload argument).

    A worker runs these messages through `run_batch`; this body serves direct and eager calls."""
    return _counted(self, [payload], lambda: _ingest_one(payload))


def _ingest_one(payload) -> dict:
    try:
        with _transaction() as session:
            result = ingest.ingest(session, current_settings(), payload)
    except validation.InvalidSubmission as err:
        _bury([payload], dead_submissions.INVALID, dead_submissions.invalid_error(err.messages))
        return {"dead": 1}
    except sa_exc.DBAPIError as err:
        if outcome_of(err) is not Outcome.REFUSED:
            raise
        _bury([payload], dead_submissions.REFUSED, refusal_text(err))
        return {"dead": 1}
    if result.duplicate:
        log.info("submission %s: its sample was seen recently, no job made", result.submission_id)
    return _outcome(result)


@celery.task(name=TaskNames.INGEST_SUBMISSIONS, bind=True, max_retries=None, **RETRY)
def ingest_submissions(self, payloads) -> dict:
    """Make the jobs of a list of submissions in one transaction (bulk intake); the bad ones are stored dead."""
    if not isinstance(payloads, list):
        _bury([payloads], dead_submissions.INVALID, "The argument of a bulk ingest is a list of submission payloads")
        return {"created": 0, "existing": 0, "duplicate": 0, "dead": 1}
    return _counted(self, payloads, lambda: _tally(_ingest_batch(payloads)))


def _ingest_batch(payloads: list) -> list[ingest.IngestResult]:
    """Ingest in one transaction; if PostgreSQL refuses something validation let through, one transaction
    per submission, so only the culprit dies, not its batch. Transient errors propagate."""
    try:
        with _transaction() as session:
            return ingest.ingest_many(session, current_settings(), payloads)
    except sa_exc.DBAPIError as err:
        if outcome_of(err) is not Outcome.REFUSED:
            raise
        log.warning(
            "bulk ingest of %d submissions refused (%s); ingesting them one by one",
            len(payloads),
            refusal_text(err)[:200],
        )
        return [result for payload in payloads for result in _ingest_alone(payload)]


def _tally(results: list[ingest.IngestResult]) -> dict:
    """Store the submissions that cannot be made into jobs as dead; count what was made, found and died."""
    dead = [result for result in results if result.errors is not None or result.refusal is not None]
    for result in dead:
        if result.errors is not None:
            _bury([result.payload], dead_submissions.INVALID, dead_submissions.invalid_error(result.errors))
        else:
            _bury([result.payload], dead_submissions.REFUSED, result.refusal or "refused")
    created = sum(1 for r in results if r.created)
    duplicate = sum(1 for r in results if r.duplicate)
    return {
        "created": created,
        "existing": len(results) - len(dead) - created - duplicate,
        "duplicate": duplicate,
        "dead": len(dead),
    }


@celery.task(name=TaskNames.INGEST_PENDING, max_retries=3, **RETRY)
def ingest_pending(triggered: bool = False, helper: bool = False) -> dict:
    """Make the jobs of committed REST submissions (SPEC 13.3), oldest first, a claimed batch per transaction.

    Woken on the ingest queue by the REST intake (`triggered`), it holds the wake-up flag and drains until its
    claims found nothing for PENDING_IDLE_SECONDS or its budget (PENDING_BUDGET_SECONDS) is spent, so a steady
    stream of submissions costs one message per budget; a claim that found less than a batch lingers
    PENDING_LINGER_SECONDS before the next, so rows are made in batches, not one per transaction. Only then
    does it clear the flag and claim once more: a commit that saw the flag still set came before that claim,
    and a commit after it wakes the next drain. At most one drain holds the flag, so at most one lingers: the
    worker's other pool processes stay free for the relay. A claim that comes back full sends a `helper`
    drain, which (like beat's run, the safety net of a lost wake-up) goes on until a claim comes back short,
    so a backlog is shared among every free worker.

    One bad row never holds up the others: a batch PostgreSQL refuses is ingested one by one (the refused
    submission is stored dead and its pending row goes with it); each row's attempts are counted with its
    claim, before the work, so a row taken before (its worker died or was cut off) is ingested alone, and one
    whose ingest keeps killing the worker process is stored dead after SAMPLEDB_INGEST_MAX_DELIVERIES
    attempts. An attempt the database was away for is taken back."""
    settings = current_settings()
    batch_size = settings.sweep_batch_size
    outcome: dict[str, int] = {}
    holding_flag = triggered and not helper
    deadline = time.monotonic() + PENDING_BUDGET_SECONDS
    idle_since: float | None = None
    while True:
        taken = _claim_and_ingest(settings, outcome)
        full = len(taken) == batch_size
        if full:
            _send_helper(settings)
        if full and time.monotonic() < deadline:
            continue
        if not holding_flag:
            break  # beat's run, a helper, or the claim after the flag was cleared
        now = time.monotonic()
        if taken:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if now < deadline and (idle_since is None or now - idle_since < PENDING_IDLE_SECONDS):
            time.sleep(PENDING_LINGER_SECONDS)
            continue
        intake_trigger.drain_ending(settings)
        holding_flag = False
    if any(outcome.values()):
        log.info("pending REST submissions ingested: %s", outcome)
    if not triggered:
        _record_run(TaskNames.INGEST_PENDING, sum(outcome.values()))
    return outcome


def _claim_and_ingest(settings, outcome: dict[str, int]) -> list:
    """Claim one batch of pending submissions and make their jobs; what happened is added to `outcome`."""
    with _transaction() as session:
        taken = ingest.claim_pending(
            session, limit=settings.sweep_batch_size, claim_ms=settings.pending_claim_seconds * 1000
        )
    for payload, attempts in taken:
        if attempts > settings.ingest_max_deliveries:
            _bury_redelivered([payload], attempts)
            outcome["dead"] = outcome.get("dead", 0) + 1
    first = [payload for payload, attempts in taken if attempts == 1]
    again = [payload for payload, attempts in taken if 1 < attempts <= settings.ingest_max_deliveries]
    try:
        results = _ingest_batch(first) if first else []
        results += [result for payload in again for result in _ingest_alone(payload)]
    except Exception as err:
        if _failure_outcome(err) is Outcome.RETRY:
            _uncount_pending(first + again)
        raise
    for key, value in _tally(results).items():
        outcome[key] = outcome.get(key, 0) + value
    return taken


def _send_helper(settings) -> None:
    """A helper drain for a backlog (past the wake-up flag, which it leaves alone)."""
    try:
        intake_trigger.send_drain(settings, helper=True)
    except Exception:  # this worker goes on alone; beat's safety net shares the rest
        log.warning("could not send a helper drain of the pending submissions", exc_info=True)


def _uncount_pending(payloads: list) -> None:
    try:
        with unit_of_work(db.session) as session:
            ingest.uncount_pending(session, [validation.submission_id_of(payload) for payload in payloads])
    except Exception:  # the database is away: the attempt stays counted, as if its process had died
        log.warning("could not take back the attempts of %d pending submissions", len(payloads), exc_info=True)


def _ingest_alone(payload) -> list[ingest.IngestResult]:
    try:
        with _transaction() as session:
            return ingest.ingest_many(session, current_settings(), [payload])
    except sa_exc.DBAPIError as err:
        if outcome_of(err) is not Outcome.REFUSED:
            raise
        return [
            ingest.IngestResult(
                submission_id=validation.submission_id_of(payload), refusal=refusal_text(err), payload=payload
            )
        ]


# -- outbox relay -----------------------------------------------------------------------------


@celery.task(name=TaskNames.RELAY_OUTBOX, max_retries=3, **RETRY)
def relay_outbox(triggered: bool = False) -> dict:
    """Send due outbox rows to Kafka; `triggered` by a commit (vs. beat's safety net). A relay that finds
    another one mid-batch leaves the rows to it (app.outbox.trigger): no retry."""
    settings = current_settings()
    trigger.ask_for_another_batch(settings)
    outcome = relay.relay_outbox(
        db.session,
        settings,
        budget_seconds=RELAY_BUDGET_SECONDS,
        on_first_lock=lambda: trigger.relay_started(settings),
        another_batch_asked=lambda: trigger.another_batch_asked(settings),
    )
    if outcome.busy:
        trigger.left_to_holder(settings)
    try:
        if outcome.more:
            trigger.send_relay(settings)
        elif outcome.failed:
            due_in = relay.next_attempt_in_ms(db.session)
            if due_in is not None:
                trigger.schedule_relay_retry(settings, countdown=max(0.1, due_in / 1000))
    except Exception:  # the rows wait in the outbox; beat's safety net relays them
        log.warning("could not schedule the next relay", exc_info=True)
    if outcome.sent or outcome.failed:
        log.info("outbox relay: %s", outcome)
    return {"sent": outcome.sent, "failed": outcome.failed, "busy": outcome.busy, "lagMs": outcome.lag_ms}


# -- sweeps -----------------------------------------------------------------------------------


def _sweep(name: str, sweep) -> int:
    """Run a service sweep batch by batch, one transaction each, until a batch comes back short; record the run."""
    settings = current_settings()
    total = 0
    while True:
        with _transaction() as session:
            moved = sweep(session, settings, now_ms(), settings.sweep_batch_size)
        total += moved
        if moved < settings.sweep_batch_size:
            _record_run(name, total)
            return total


def _record_run(name: str, moved: int) -> None:
    """For `sampledb-jobs status`: when this periodic task last finished and what it moved."""
    with unit_of_work(db.session) as session:
        sweep_runs.record(session, name, moved, now_ms())


@celery.task(name=TaskNames.SWEEP_EXECUTION_TIMEOUTS, max_retries=3, **RETRY)
def sweep_execution_timeouts() -> int:
    """Time out executing jobs whose analyzer went silent."""
    return _sweep(TaskNames.SWEEP_EXECUTION_TIMEOUTS, service.sweep_execution_timeouts)


@celery.task(name=TaskNames.SWEEP_ENQUEUED_TIMEOUTS, max_retries=3, **RETRY)
def sweep_enqueued_timeouts() -> int:
    """Time out jobs nobody started."""
    return _sweep(TaskNames.SWEEP_ENQUEUED_TIMEOUTS, service.sweep_enqueued_timeouts)


@celery.task(name=TaskNames.SWEEP_UNCONFIRMED_ABORTS, max_retries=3, **RETRY)
def sweep_unconfirmed_aborts() -> int:
    """Abort jobs whose analyzer did not confirm an abort request in time."""
    return _sweep(TaskNames.SWEEP_UNCONFIRMED_ABORTS, service.sweep_unconfirmed_aborts)


# -- retention --------------------------------------------------------------------------------


@celery.task(name=TaskNames.PURGE, max_retries=3, **RETRY)
def purge() -> dict:
    """Delete sent outbox rows and final jobs past their retention (SKIP LOCKED: safe to run twice at once)."""
    purged = retention.purge(db.session, current_settings(), budget_seconds=PURGE_BUDGET_SECONDS)
    _record_run(TaskNames.PURGE, purged.total)
    return purged.by_table()
