"""Job search (§5.4): criteria already validated by the API schema, turned into one SQL query."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.access import Scope
from app.accounts.customers import customer_id_named
from app.errors.domain import TooManyMatches
from app.jobs import read
from app.jobs.states import JOB_ACTIVE
from app.models import Customer, Job

MAX_RESULTS = 10_000
TIME_FIELDS = {
    "enqueuedTimestamp": Job.enqueued_timestamp,
    "startTimestamp": Job.start_timestamp,
    "endTimestamp": Job.end_timestamp,
    "lastUpdatedTimestamp": Job.last_updated_timestamp,
}
SORT_FIELDS = {
    "id": Job.id,
    "state": Job.state,
    **TIME_FIELDS,
    "sampleSha256": Job.sample_sha256,
    "customer": Customer.short_name,
}


@dataclass
class Criteria:
    limit: int = 25
    offset: int = 0
    sort_by: list[str] = field(default_factory=lambda: ["enqueuedTimestamp"])
    state: list[str] = field(default_factory=lambda: list(JOB_ACTIVE))
    sample_sha256: list[str] = field(default_factory=list)
    customer: list[str | int] = field(default_factory=list)
    start_timestamp: int | None = None
    end_timestamp: int | None = None
    time_field_strategy: list[str] = field(default_factory=lambda: ["all"])
    time_match_strategy: str = "any"


def _time_condition(criteria: Criteria):
    if criteria.start_timestamp is None and criteria.end_timestamp is None:
        return None
    names = list(TIME_FIELDS) if "all" in criteria.time_field_strategy else criteria.time_field_strategy
    per_field = []
    for name in dict.fromkeys(names):
        column = TIME_FIELDS[name]
        bounds = []
        if criteria.start_timestamp is not None:
            bounds.append(column >= criteria.start_timestamp)
        if criteria.end_timestamp is not None:
            bounds.append(column <= criteria.end_timestamp)
        # A null field never lies in a range: SQL comparisons with NULL are not true.
        per_field.append(sa.and_(*bounds))
    return sa.or_(*per_field) if criteria.time_match_strategy == "any" else sa.and_(*per_field)


def _customer_ids(session: so.Session | sa.Connection, refs: list[str | int]) -> list[int]:
    ids = {i for i in map(customer_id_named, refs) if i is not None}
    names = [r for r in refs if isinstance(r, str)]
    if names:
        ids |= set(session.scalars(sa.select(Customer.id).where(Customer.short_name.in_(names))))
    return sorted(ids)


def search_jobs(session: so.Session | sa.Connection, criteria: Criteria, scope: Scope) -> tuple[list[dict], int]:
    """The page of jobs matching `criteria` that `scope` may see, as the API shows them, and the total number
    of matches."""
    conditions = []
    if criteria.state:
        conditions.append(Job.state.in_(criteria.state))
    if criteria.sample_sha256:
        conditions.append(Job.sample_sha256.in_({s.lower() for s in criteria.sample_sha256}))
    if criteria.customer:
        # A customer outside the caller's scope simply matches nothing (scope.restrict below).
        conditions.append(Job.customer_id.in_(_customer_ids(session, criteria.customer)))
    time_condition = _time_condition(criteria)
    if time_condition is not None:
        conditions.append(time_condition)

    matching = scope.restrict(sa.select(Job.id).where(*conditions))

    def count_matches() -> int:
        return session.scalars(sa.select(sa.func.count()).select_from(matching.subquery())).one()

    if criteria.limit == 0:
        count = count_matches()
        if count > MAX_RESULTS:
            raise TooManyMatches(
                "limit",
                f"0 asks for every match, but {count} jobs match (at most {MAX_RESULTS}); "
                "narrow the search or page with limit and offset",
            )
        if count == 0 or criteria.offset >= count:
            return [], count
        return _page(session, criteria, scope, conditions), count
    # The page first: one that is not full from offset 0 holds every match, so its length is the count and
    # the count query (a second scan of the matches) is skipped, as for most searches by sample or customer.
    jobs = _page(session, criteria, scope, conditions)
    if criteria.offset == 0 and len(jobs) < criteria.limit:
        return jobs, len(jobs)
    return jobs, count_matches()


def _page(session: so.Session | sa.Connection, criteria: Criteria, scope: Scope, conditions: list) -> list[dict]:
    """The jobs of the page `criteria` asks for (offset, limit, sort), as the API shows them."""
    # A deferred join: page through the matching ids (narrow rows, index order) first, then load
    # only that page's jobs with their customers and users, instead of joining every match.
    sort_columns = [SORT_FIELDS[name.lstrip("-")].label(f"sort_{i}") for i, name in enumerate(criteria.sort_by)]
    inner = scope.restrict(sa.select(Job.id, *sort_columns).where(*conditions))
    if any(name.lstrip("-") == "customer" for name in criteria.sort_by):
        inner = inner.join(Customer, Customer.id == Job.customer_id)
    inner_order = [
        column.desc() if name.startswith("-") else column.asc()
        for name, column in zip(criteria.sort_by, (SORT_FIELDS[n.lstrip("-")] for n in criteria.sort_by))
    ]
    inner = inner.order_by(*inner_order, Job.id.asc()).offset(criteria.offset)  # ties broken by id: stable paging
    if criteria.limit:
        inner = inner.limit(criteria.limit)
    page = inner.subquery("page")
    outer_order = [
        page.c[f"sort_{i}"].desc() if name.startswith("-") else page.c[f"sort_{i}"].asc()
        for i, name in enumerate(criteria.sort_by)
    ]
    stmt = read.JOBS.join(page, page.c.id == Job.id).order_by(*outer_order, page.c.id.asc())
    return read.job_dicts(session, stmt)
