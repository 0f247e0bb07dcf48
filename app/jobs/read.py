"""Jobs as the API shows them, read with Core selects straight into the response dicts.

The hot reads (GET /job/{id}, the search pages) skip the ORM: no identity map, no
relationship loaders, no uniquing of joined rows. One select reads the jobs with their
customer and users, a second their tasks; both hand their rows to the serializers of
app.jobs.serialize (the rows carry the models' attribute names), so the answer is the one
the ORM objects would make. `conn` is a Connection or a Session: the API passes an
autocommit connection, so a read costs no BEGIN/ROLLBACK round trips.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from app.jobs.serialize import job_view, task_to_dict
from app.jobs.service import EVERYONE, JobNotFound, Scope
from app.models import Customer, Job, JobTask, User

_jobs, _tasks = Job.__table__, JobTask.__table__
JOB_FIELDS = ("id", "state", "abort_requested", "site", "sample_sha256", "sample_size", "submission",
              "classification", "enqueued_timestamp", "start_timestamp", "end_timestamp", "last_updated_timestamp",
              "abort_requested_timestamp", "abort_reason", "message")
CUSTOMER_FIELDS = ("id", "short_name", "name", "domain_id", "domain_name")  # the arguments of Customer.info
USER_FIELDS = ("id", "short_name", "name")  # the arguments of User.info before the customer
TASK_FIELDS = ("job_id", "id", "worker", "state", "enqueued_timestamp", "start_timestamp", "end_timestamp",
               "last_updated_timestamp", "analyses", "message")


def _people() -> tuple[list, sa.FromClause]:
    """The job's customer, last-updating user and abort-requesting user (each user with its customer):
    their columns in that order, and the join that reads them."""
    columns, joined = [], _jobs
    customer = Customer.__table__.alias("job_customer")
    columns += [customer.c[name] for name in CUSTOMER_FIELDS]
    joined = joined.join(customer, customer.c.id == _jobs.c.customer_id)
    for role, user_id in (("updater", _jobs.c.last_updated_by_user_id), ("aborter", _jobs.c.abort_requested_by_user_id)):
        user, user_customer = User.__table__.alias(role), Customer.__table__.alias(f"{role}_customer")
        columns += [user.c[name] for name in USER_FIELDS] + [user_customer.c[name] for name in CUSTOMER_FIELDS]
        joined = joined.outerjoin(user, user.c.id == user_id).outerjoin(user_customer,
                                                                       user_customer.c.id == user.c.customer_id)
    return columns, joined


_PEOPLE_COLUMNS, _JOINED = _people()
# Labels: the job's columns keep their names (what the serializers read), the others are read by position.
JOBS = sa.select(*(_jobs.c[name] for name in JOB_FIELDS),
                 *(column.label(f"p{n}") for n, column in enumerate(_PEOPLE_COLUMNS))).select_from(_JOINED)
# One statement for any number of jobs (= ANY of an array, not an IN list): compiled and prepared once.
TASKS = (sa.select(*(_tasks.c[name] for name in TASK_FIELDS))
         .where(_tasks.c.job_id == sa.any_(sa.bindparam("job_ids", type_=ARRAY(sa.Uuid))))
         .order_by(_tasks.c.worker))

_C, _U = len(CUSTOMER_FIELDS), len(USER_FIELDS)
_CUSTOMER = slice(len(JOB_FIELDS), len(JOB_FIELDS) + _C)
_UPDATER = _CUSTOMER.stop
_ABORTER = _UPDATER + _U + _C


def _user(row: sa.Row, start: int) -> dict | None:
    if row[start] is None:
        return None
    return User.info(*row[start:start + _U], Customer.info(*row[start + _U:start + _U + _C]))


def job_dicts(conn, stmt: sa.Select) -> list[dict]:
    """The jobs `stmt` (JOBS narrowed and ordered) selects, as the API shows them, in its order."""
    rows = conn.execute(stmt).all()
    if not rows:
        return []
    tasks: dict[uuid.UUID, list[dict]] = {row.id: [] for row in rows}
    for task in conn.execute(TASKS, {"job_ids": list(tasks)}):
        tasks[task.job_id].append(task_to_dict(task))
    return [job_view(row, customer=Customer.info(*row[_CUSTOMER]), tasks=tasks[row.id],
                     last_updated_by=_user(row, _UPDATER), abort_requested_by=_user(row, _ABORTER))
            for row in rows]


def read_job(conn, job_id: uuid.UUID, scope: Scope = EVERYONE) -> dict:
    """GET /job/{id}: the job with its tasks; JobNotFound also for a job outside `scope`."""
    found = job_dicts(conn, scope.restrict(JOBS.where(_jobs.c.id == job_id)))
    if not found:
        raise JobNotFound(f"Job {job_id} not found")
    return found[0]
