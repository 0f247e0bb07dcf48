"""Jobs as the API shows them, read with Core selects straight into the response dicts.

The hot reads (GET /job/{id}, the search pages) skip the ORM: no identity map, no
relationship loaders, no uniquing of joined rows. One select reads each job with its
customer, its users and its tasks as one JSON array of column values (tasks aggregated by
PostgreSQL), and hands them to the serializers of app.jobs.serialize under the models'
attribute names, so the answer is the one the ORM objects would make. `conn` is a Connection or
a Session: the API passes an autocommit connection, so a read costs no BEGIN/ROLLBACK round trips.
"""

from __future__ import annotations

import uuid
from collections import namedtuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

from app.accounts.access import EVERYONE, Scope
from app.jobs.serialize import job_view, task_to_dict
from app.jobs.service import JobNotFound
from app.models import Customer, Job, JobTask, User

_jobs, _tasks = Job.__table__, JobTask.__table__
# The field names are given literally to namedtuple, so that type checkers know the rows' fields.
JobRow = namedtuple(  # what job_view reads of a job
    "JobRow",
    (
        "id",
        "state",
        "abort_requested",
        "site",
        "sample_sha256",
        "sample_size",
        "submission",
        "classification",
        "options",
        "enqueued_timestamp",
        "start_timestamp",
        "end_timestamp",
        "last_updated_timestamp",
        "abort_requested_timestamp",
        "abort_reason",
        "message",
    ),
)
JOB_FIELDS = JobRow._fields
CUSTOMER_FIELDS = ("id", "short_name", "name", "domain_id", "domain_name")  # the arguments of Customer.info
USER_FIELDS = ("id", "short_name", "name")  # the arguments of User.info before the customer
TaskRow = namedtuple(  # what task_to_dict reads of a task
    "TaskRow",
    (
        "id",
        "worker",
        "state",
        "enqueued_timestamp",
        "start_timestamp",
        "end_timestamp",
        "last_updated_timestamp",
        "analyses",
        "message",
    ),
)
TASK_FIELDS = TaskRow._fields


def _values(table, names) -> sa.ColumnElement:
    return sa.func.json_build_array(*(table.c[name] for name in names))


def _people() -> tuple[list, sa.FromClause]:
    """The job's customer, last-updating user and abort-requesting user (each user with its customer):
    one JSON array of column values each, and the join that reads them."""
    customer = Customer.__table__.alias("job_customer")
    columns = [_values(customer, CUSTOMER_FIELDS)]
    joined = _jobs.join(customer, customer.c.id == _jobs.c.customer_id)
    for role, user_id in (
        ("updater", _jobs.c.last_updated_by_user_id),
        ("aborter", _jobs.c.abort_requested_by_user_id),
    ):
        user, user_customer = User.__table__.alias(role), Customer.__table__.alias(f"{role}_customer")
        columns.append(
            sa.func.json_build_array(
                *(user.c[name] for name in USER_FIELDS), *(user_customer.c[name] for name in CUSTOMER_FIELDS)
            )
        )
        joined = joined.outerjoin(user, user.c.id == user_id).outerjoin(
            user_customer, user_customer.c.id == user.c.customer_id
        )
    return columns, joined


_PEOPLE, _JOINED = _people()
# The job's tasks in the order of the Job.tasks relationship (by worker), in the job's row.
_TASKS = (
    sa.select(
        sa.func.coalesce(
            sa.func.json_agg(aggregate_order_by(_values(_tasks, TASK_FIELDS), _tasks.c.worker)),
            sa.literal_column("'[]'::json"),
        )
    )
    .where(_tasks.c.job_id == _jobs.c.id)
    .scalar_subquery()
)
# A job is one JSON array of its columns, people and tasks: psycopg parses it in C, and a one-column
# result is cheap to describe (psycopg builds an object per column of every result, SQLAlchemy reads them).
JOBS = sa.select(sa.func.json_build_array(*(_jobs.c[name] for name in JOB_FIELDS), *_PEOPLE, _TASKS)).select_from(
    _JOINED
)
_CUSTOMER, _UPDATER, _ABORTER, _TASK_LIST = range(len(JOB_FIELDS), len(JOB_FIELDS) + 4)
_U = len(USER_FIELDS)


def _user(values: list) -> dict | None:
    if values[0] is None:
        return None
    id_, short_name, name = values[:_U]
    return User.info(id_, short_name, name, Customer.info(*values[_U:]))


def job_dicts(conn, stmt: sa.Select, params: dict | None = None) -> list[dict]:
    """The jobs `stmt` (JOBS narrowed and ordered) selects, as the API shows them, in its order."""
    return [
        job_view(
            JobRow(*job[:_CUSTOMER]),
            customer=Customer.info(*job[_CUSTOMER]),
            tasks=[task_to_dict(TaskRow(*task)) for task in job[_TASK_LIST]],
            last_updated_by=_user(job[_UPDATER]),
            abort_requested_by=_user(job[_ABORTER]),
        )
        for job in conn.scalars(stmt, params)
    ]


# Built once: SQLAlchemy computes a statement's cache key once per statement object, and for this one
# that costs more than the rest of its execution on the Python side.
_JOB_BY_ID = JOBS.where(_jobs.c.id == sa.bindparam("job_id", type_=sa.Uuid))
_JOB_BY_ID_IN_SCOPE = _JOB_BY_ID.where(
    _jobs.c.customer_id == sa.any_(sa.bindparam("customer_ids", type_=ARRAY(sa.Integer)))
)


def read_job(conn, job_id: uuid.UUID, scope: Scope = EVERYONE) -> dict:
    """GET /job/{id}: the job with its tasks; JobNotFound also for a job outside `scope`."""
    if scope.customer_ids is None:
        found = job_dicts(conn, _JOB_BY_ID, {"job_id": job_id})
    else:
        found = job_dicts(conn, _JOB_BY_ID_IN_SCOPE, {"job_id": job_id, "customer_ids": sorted(scope.customer_ids)})
    if not found:
        raise JobNotFound(f"Job {job_id} not found")
    return found[0]
