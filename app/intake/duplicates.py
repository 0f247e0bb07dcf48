"""The duplicate window (SPEC §11.3): a customer that sends a sample again within
SAMPLEDB_DUPLICATE_WINDOW_SECONDS gets no second job for it."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.customers import CustomerCache
from app.clock import now_ms
from app.config import Settings
from app.jobs import service
from app.models import Customer, Job
from app.models.jobs import INGESTED


def _pair(data: dict, customers: CustomerCache) -> tuple[str, int]:
    return data["submission"]["sample"]["id"], customers[data["submission"]["customer"]].id


def _recent_pairs(session: so.Session, settings: Settings, pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (sample, customer) pairs with a job enqueued within the duplicate window."""
    cutoff = now_ms() - settings.duplicate_window_seconds * 1000
    rows = session.execute(
        sa.select(Job.sample_sha256, Job.customer_id).where(
            Job.sample_sha256.in_({sha256 for sha256, _ in pairs}), Job.enqueued_timestamp >= cutoff
        )
    ).all()
    return {(sha256, customer_id) for sha256, customer_id in rows} & pairs


def _made_into_jobs(session: so.Session, submission_ids: list[str]) -> set[str]:
    rows = session.scalars(sa.select(Job.submission_id).where(Job.submission_id.in_(submission_ids), sa.text(INGESTED)))
    return {str(r) for r in rows}


def dropped_in_batch(
    session: so.Session, settings: Settings, valid: list[dict], customers: CustomerCache
) -> list[bool]:
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
