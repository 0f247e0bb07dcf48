"""Jobs as the API shows them, written as JSON by PostgreSQL and spliced into the envelope.

The hot reads (GET /job/{id}, the search pages) neither load ORM objects nor decode rows:
one select builds each job's JSON (`json_build_object`, its customer, users and tasks
included, the stored JSONB as it is) and the page's array (`json_agg`), and hands it to the
API as one text value. The answer equals, after JSON parsing, what app.jobs.serialize makes of
the ORM objects (the write paths' answers and the Kafka messages): tests/test_read_path.py
compares both on random jobs. Text outside ASCII goes out as UTF-8 instead of `\\u` escapes.
`conn` is a Connection or a Session: the API passes an autocommit connection, so a read costs no
BEGIN/ROLLBACK round trips.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from app.accounts.access import EVERYONE, Scope
from app.jobs.service import JobNotFound
from app.jobs.states import JOB_ACTIVE
from app.models import Customer, Job, JobTask, User

_jobs, _tasks = Job.__table__, JobTask.__table__
_EMPTY: sa.ColumnElement = sa.literal_column("'[]'::json")
_EMPTY_JSONB: sa.ColumnElement = sa.literal_column("'[]'::jsonb")


def _key(text: str) -> sa.ColumnElement:
    return sa.literal_column(f"'{text}'")  # the keys are this module's constants: SQL text, not bind parameters


def _object(*pairs) -> sa.ColumnElement:
    """A JSON object of (key, value) pairs in this order: the order app.jobs.serialize writes them in."""
    return sa.func.json_build_object(*(part for key, value in pairs for part in (_key(key), value)))


def _customer(customer) -> sa.ColumnElement:  # Customer.info
    domain = sa.case(
        (customer.c.domain_id.is_not(None), _object(("id", customer.c.domain_id), ("name", customer.c.domain_name)))
    )
    return _object(
        ("id", customer.c.id), ("shortName", customer.c.short_name), ("name", customer.c.name), ("domain", domain)
    )


def _user(user, customer) -> sa.ColumnElement:  # User.info, null for no user
    info = _object(
        ("id", user.c.id), ("shortName", user.c.short_name), ("name", user.c.name), ("customer", _customer(customer))
    )
    return sa.case((user.c.id.is_not(None), info))


def _people() -> tuple[dict, sa.FromClause]:
    """The job's customer, last-updating user and abort-requesting user (each user with its customer) as
    JSON, and the join that reads them."""
    customer = Customer.__table__.alias("job_customer")
    people = {"customer": _customer(customer)}
    joined = _jobs.join(customer, customer.c.id == _jobs.c.customer_id)
    for role, user_id in (
        ("lastUpdatedByUser", _jobs.c.last_updated_by_user_id),
        ("abortRequestedByUser", _jobs.c.abort_requested_by_user_id),
    ):
        user, user_customer = User.__table__.alias(f"{role}_user"), Customer.__table__.alias(f"{role}_customer")
        people[role] = _user(user, user_customer)
        joined = joined.outerjoin(user, user.c.id == user_id).outerjoin(
            user_customer, user_customer.c.id == user.c.customer_id
        )
    return people, joined


def _or_empty(value, empty=_EMPTY) -> sa.ColumnElement:
    return sa.func.coalesce(value, empty)


_TASK = _object(  # task_to_dict
    ("id", sa.cast(_tasks.c.id, sa.Text)),
    ("worker", _tasks.c.worker),
    ("state", _tasks.c.state),
    ("enqueuedTimestamp", _tasks.c.enqueued_timestamp),
    ("startTimestamp", _tasks.c.start_timestamp),
    ("endTimestamp", _tasks.c.end_timestamp),
    ("lastUpdatedTimestamp", _tasks.c.last_updated_timestamp),
    ("analyses", _or_empty(_tasks.c.analyses, _EMPTY_JSONB)),
    ("message", _tasks.c.message),
)
# The job's tasks in the order of the Job.tasks relationship (by worker).
_TASK_LIST = _or_empty(
    sa.select(sa.func.json_agg(aggregate_order_by(_TASK, _tasks.c.worker)))
    .where(_tasks.c.job_id == _jobs.c.id)
    .scalar_subquery()
)
_PEOPLE, JOINED = _people()
_FLAGS = sa.case(  # job_flags
    (
        sa.and_(_jobs.c.abort_requested, _jobs.c.state.in_([_key(state) for state in JOB_ACTIVE])),
        sa.literal_column("""'["ABORT_REQUESTED"]'::json"""),
    ),
    else_=_EMPTY,
)
JOB = _object(  # app.jobs.serialize.job_to_dict
    ("id", sa.cast(_jobs.c.id, sa.Text)),
    ("state", _jobs.c.state),
    ("flags", _FLAGS),
    ("site", _jobs.c.site),
    ("analysedSample", _object(("id", _jobs.c.sample_sha256), ("size", _jobs.c.sample_size))),
    ("customer", _PEOPLE["customer"]),
    ("submission", _jobs.c.submission),
    ("classification", _jobs.c.classification),
    ("tasks", _TASK_LIST),
    ("options", _or_empty(_jobs.c.options, _EMPTY_JSONB)),
    ("enqueuedTimestamp", _jobs.c.enqueued_timestamp),
    ("startTimestamp", _jobs.c.start_timestamp),
    ("endTimestamp", _jobs.c.end_timestamp),
    ("lastUpdatedTimestamp", _jobs.c.last_updated_timestamp),
    ("lastUpdatedByUser", _PEOPLE["lastUpdatedByUser"]),
    ("abortRequestedTimestamp", _jobs.c.abort_requested_timestamp),
    ("abortRequestedByUser", _PEOPLE["abortRequestedByUser"]),
    ("abortReason", _jobs.c.abort_reason),
    ("message", _jobs.c.message),
)
"""One job's API JSON, a column of any select from JOINED."""


def as_text(json_value: sa.ColumnElement) -> sa.ColumnElement:
    """JSON handed over as the text PostgreSQL wrote: psycopg returns it as a str without parsing it."""
    return sa.cast(json_value, sa.Text)


def array_text(json_array: sa.ColumnElement) -> sa.ColumnElement:
    """A JSON array (`json_agg`, null over no rows) as text, `[]` for no rows."""
    return as_text(_or_empty(json_array))


# Built once, with bind parameters: SQLAlchemy computes a statement's cache key once per statement
# object, and for these that costs more than the rest of their execution on the Python side.
_JOB_BY_ID = sa.select(as_text(JOB)).select_from(JOINED).where(_jobs.c.id == sa.bindparam("job_id", type_=sa.Uuid))
_JOB_BY_ID_IN_SCOPE = _JOB_BY_ID.where(_jobs.c.customer_id.in_(sa.bindparam("customer_ids", expanding=True)))


def read_job(conn, job_id: uuid.UUID, scope: Scope = EVERYONE) -> str:
    """GET /job/{id}: the job with its tasks, as JSON text; JobNotFound also for a job outside `scope`."""
    if scope.customer_ids is None:
        found = conn.scalar(_JOB_BY_ID, {"job_id": job_id})
    else:
        found = conn.scalar(_JOB_BY_ID_IN_SCOPE, {"job_id": job_id, "customer_ids": sorted(scope.customer_ids)})
    if found is None:
        raise JobNotFound(f"Job {job_id} not found")
    return found
