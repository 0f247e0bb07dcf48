"""Job search (§5.4): criteria already validated by the API schema, answered by one SQL statement.

The statements are built once per search shape (which criteria are given, the time fields and
strategy, the sort, the caller's scope restricted or not) with bind parameters for the values:
a request builds no statement objects, and SQLAlchemy's compiled cache finds the shape's SQL.
One round trip answers a page: PostgreSQL writes the page's JSON (app.jobs.read) and the number
of matches, whose count query it runs only when the page does not tell it (the page is full, or
does not start at offset 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import aggregate_order_by

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


class _Shape(NamedTuple):
    """What a search's SQL depends on; the values are its bind parameters."""

    states: bool
    sample_sha256: bool
    customers: bool
    time_fields: tuple[str, ...]  # () without a time range
    time_match_any: bool
    start: bool
    end: bool
    sort_by: tuple[str, ...]
    scoped: bool
    every_match: bool  # limit 0


class Page(NamedTuple):
    data: str  # the jobs' JSON array, as PostgreSQL wrote it
    size: int
    matches: int  # the number of every match, SPEC 5.3's count


def _shape(criteria: Criteria, scope: Scope) -> _Shape:
    ranged = criteria.start_timestamp is not None or criteria.end_timestamp is not None
    names = list(TIME_FIELDS) if "all" in criteria.time_field_strategy else criteria.time_field_strategy
    return _Shape(
        states=bool(criteria.state),
        sample_sha256=bool(criteria.sample_sha256),
        customers=bool(criteria.customer),
        time_fields=tuple(dict.fromkeys(names)) if ranged else (),
        time_match_any=criteria.time_match_strategy == "any",
        start=criteria.start_timestamp is not None,
        end=criteria.end_timestamp is not None,
        sort_by=tuple(criteria.sort_by),
        scoped=scope.customer_ids is not None,
        every_match=criteria.limit == 0,
    )


def _parameters(criteria: Criteria, scope: Scope) -> dict:
    ids = sorted({i for i in map(customer_id_named, criteria.customer) if i is not None})
    return {
        "states": criteria.state,
        "sample_sha256": sorted({s.lower() for s in criteria.sample_sha256}),
        "customer_ids": ids,
        # Text always names a shortName too (a customer may be called "12").
        "customer_names": sorted({r for r in criteria.customer if isinstance(r, str)}),
        "start": criteria.start_timestamp,
        "end": criteria.end_timestamp,
        "scope": sorted(scope.customer_ids) if scope.customer_ids is not None else None,
        "limit": criteria.limit,
        "offset": criteria.offset,
    }


def _conditions(shape: _Shape) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if shape.states:
        conditions.append(Job.state.in_(sa.bindparam("states", expanding=True)))
    if shape.sample_sha256:
        conditions.append(Job.sample_sha256.in_(sa.bindparam("sample_sha256", expanding=True)))
    if shape.customers:
        # A customer outside the caller's scope simply matches nothing (the scope's condition below).
        named = sa.select(Customer.id).where(
            sa.or_(
                Customer.id.in_(sa.bindparam("customer_ids", expanding=True)),
                Customer.short_name.in_(sa.bindparam("customer_names", expanding=True)),
            )
        )
        conditions.append(Job.customer_id.in_(named))
    if shape.time_fields:
        per_field = []
        for name in shape.time_fields:
            column, bounds = TIME_FIELDS[name], []
            if shape.start:
                bounds.append(column >= sa.bindparam("start", type_=sa.BigInteger))
            if shape.end:
                bounds.append(column <= sa.bindparam("end", type_=sa.BigInteger))
            # A null field never lies in a range: SQL comparisons with NULL are not true.
            per_field.append(sa.and_(*bounds))
        conditions.append(sa.or_(*per_field) if shape.time_match_any else sa.and_(*per_field))
    if shape.scoped:
        conditions.append(Job.customer_id.in_(sa.bindparam("scope", expanding=True)))
    return conditions


@functools.lru_cache(maxsize=256)  # bounded: sortBy lists alone make more shapes than any caller uses
def _statements(shape: _Shape) -> tuple[sa.Select, sa.Select]:
    """The shape's count statement and page statement (size, JSON array, number of matches)."""
    conditions = _conditions(shape)
    count = sa.select(sa.func.count()).select_from(sa.select(Job.id).where(*conditions).subquery("matching"))

    # A deferred join: page through the matching ids (narrow rows, index order) first, then build the JSON
    # of only that page's jobs with their customers and users, instead of joining every match.
    sort_columns = [SORT_FIELDS[name.lstrip("-")].label(f"sort_{i}") for i, name in enumerate(shape.sort_by)]
    inner = sa.select(Job.id, *sort_columns).where(*conditions)
    if any(name.lstrip("-") == "customer" for name in shape.sort_by):
        inner = inner.join(Customer, Customer.id == Job.customer_id)
    inner_order = [
        column.desc() if name.startswith("-") else column.asc()
        for name, column in zip(shape.sort_by, (SORT_FIELDS[n.lstrip("-")] for n in shape.sort_by))
    ]
    # Ties broken by id: stable paging.
    inner = inner.order_by(*inner_order, Job.id.asc()).offset(sa.bindparam("offset", type_=sa.Integer))
    if not shape.every_match:
        inner = inner.limit(sa.bindparam("limit", type_=sa.Integer))
    page = inner.subquery("page")
    outer_order = [
        page.c[f"sort_{i}"].desc() if name.startswith("-") else page.c[f"sort_{i}"].asc()
        for i, name in enumerate(shape.sort_by)
    ]
    built = (
        sa.select(
            sa.func.count().label("size"),
            sa.func.json_agg(aggregate_order_by(read.JOB, *outer_order, page.c.id.asc())).label("data"),
        )
        .select_from(read.JOINED.join(page, page.c.id == Job.id))
        .subquery("built")
    )
    matches: sa.ColumnElement
    if shape.every_match:
        matches = sa.null()  # counted before, to refuse too many
    else:
        # A page not full from offset 0 holds every match, so its size is the count; PostgreSQL runs the
        # count (a second scan of the matches, an InitPlan) only when this CASE reaches it.
        matches = sa.case(
            (
                sa.and_(
                    sa.bindparam("offset", type_=sa.Integer) == sa.literal_column("0"),
                    built.c.size < sa.bindparam("limit", type_=sa.Integer),
                ),
                built.c.size,
            ),
            else_=count.scalar_subquery(),
        )
    return count, sa.select(built.c.size, read.array_text(built.c.data), matches)


def search_jobs(session: so.Session | sa.Connection, criteria: Criteria, scope: Scope) -> Page:
    """The page of jobs matching `criteria` that `scope` may see, as the API shows them, and the number of
    matches."""
    count_statement, page_statement = _statements(_shape(criteria, scope))
    parameters = _parameters(criteria, scope)
    if criteria.limit == 0:
        count = session.scalars(count_statement, parameters).one()
        if count > MAX_RESULTS:
            raise TooManyMatches(
                "limit",
                f"0 asks for every match, but {count} jobs match (at most {MAX_RESULTS}); "
                "narrow the search or page with limit and offset",
            )
        if count == 0 or criteria.offset >= count:
            return Page("[]", 0, count)
        size, data, _ = session.execute(page_statement, parameters).one()
        return Page(data, size, count)
    size, data, count = session.execute(page_statement, parameters).one()
    return Page(data, size, count)
