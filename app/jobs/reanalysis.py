"""Reanalysis (§11.1): a new job for a sample from its latest submission, without a new upload."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.access import EVERYONE, Actor, Scope
from app.accounts.customers import customer_id_named
from app.config import Settings
from app.errors.domain import NotFound
from app.jobs import service
from app.jobs.states import JOB_ACTIVE
from app.models import Customer, Job
from app.policy import store as policy_store


class SampleNotFound(NotFound):
    """No submission of the sample the caller may see."""


def reanalyse(
    session: so.Session,
    settings: Settings,
    sha256: str,
    *,
    customer: int | str | None,
    actor: Actor | None,
    scope: Scope = EVERYONE,
) -> tuple[Job, bool]:
    """A new job for the sample from its latest submission the caller may see, under the policy as it is
    now; or the sample's active job of that customer, if it has one. Returns the job and whether it is new.

    Concurrent calls for one sample and customer queue on an advisory lock, and each checks for an active
    job under it, so they make one job; the unique index ix_jobs_active_reanalysis backs that up. Ingest
    takes no such lock: several submissions may still make several active jobs, as they always could.
    """
    stmt = scope.restrict(sa.select(Job).where(Job.sample_sha256 == sha256.lower()))
    if customer is not None:
        # A query string carries an id as digits: they name the customer of that id or of that shortName.
        customer_id = customer_id_named(customer)
        by_name = Customer.short_name == str(customer)
        stmt = stmt.join(Customer, Job.customer_id == Customer.id).where(
            by_name if customer_id is None else sa.or_(Customer.id == customer_id, by_name)
        )
    latest = session.scalars(stmt.order_by(Job.enqueued_timestamp.desc(), Job.id.desc()).limit(1)).first()
    if latest is None:
        raise SampleNotFound(f"No submission of sample {sha256.lower()} found")
    service.lock_sample_for_customer(session, latest.sample_sha256, latest.customer_id)
    active = session.scalars(
        sa.select(Job.id)
        .where(
            Job.sample_sha256 == latest.sample_sha256, Job.customer_id == latest.customer_id, Job.state.in_(JOB_ACTIVE)
        )
        .order_by(Job.enqueued_timestamp.desc(), Job.id.desc())
        .limit(1)
    ).first()
    if active is not None:
        return service.get_job(session, active), False
    plan = policy_store.plan_for(session, settings, latest.customer_id, latest.submission, latest.classification)
    new = service.NewJob(
        latest.submission,
        latest.classification,
        latest.customer_id,
        plan,
        uuid.uuid4(),
        latest.sample_size,
        reanalysis=True,
    )
    ((job_id, _),) = service.create_jobs(session, settings, [new], actor=actor)
    session.flush()
    return service.get_job(session, job_id), True
