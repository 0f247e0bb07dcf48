"""Who acts and what they may see: the actor behind a change and the customers a caller's scope holds."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import sqlalchemy as sa

from app.models import Job


@dataclass(frozen=True)
class Actor:
    """The user behind a key, as a snapshot: safe to keep across requests and sessions."""

    id: int
    customer_short_name: str
    info: dict

    def to_info(self) -> dict:
        return copy.deepcopy(self.info)


@dataclass(frozen=True)
class Scope:
    """The customers a caller may see; `customer_ids=None` means every customer."""

    customer_ids: frozenset[int] | None = None

    def allows(self, customer_id: int) -> bool:
        return self.customer_ids is None or customer_id in self.customer_ids

    def restrict(self, stmt: sa.Select) -> sa.Select:
        return stmt if self.customer_ids is None else stmt.where(Job.customer_id.in_(self.customer_ids))


EVERYONE = Scope()
