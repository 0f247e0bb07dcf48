"""Customers and users: created on first sight, by submission intake and when keys are made."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import Customer, User

# Customer ids are PostgreSQL integers.
CUSTOMER_ID_MAX = 2**31 - 1


def customer_id_named(ref: int | str) -> int | None:
    """The customer id a reference names, or None: an int, or text of ASCII digits ("12"; never "١٢" or "²",
    which Python's isdigit() also takes) within the id column's range. Text always names a shortName too."""
    if isinstance(ref, int):
        return ref if 0 <= ref <= CUSTOMER_ID_MAX else None
    if ref.isascii() and ref.isdigit() and len(ref) <= len(str(CUSTOMER_ID_MAX)) and int(ref) <= CUSTOMER_ID_MAX:
        return int(ref)
    return None


def ensure_customer(session: so.Session, short_name: str, name: str | None = None) -> Customer:
    """The customer with this shortName, created on first sight (concurrent callers get the same row)."""
    session.execute(
        pg_insert(Customer)
        .values(short_name=short_name, name=name or short_name)
        .on_conflict_do_nothing(index_elements=[Customer.short_name])
    )
    return session.scalars(sa.select(Customer).where(Customer.short_name == short_name)).one()


def ensure_user(session: so.Session, short_name: str, customer: Customer, name: str | None = None) -> User:
    user = session.scalars(sa.select(User).where(User.short_name == short_name)).one_or_none()
    if user is None:
        user = User(short_name=short_name, name=name or short_name, customer_id=customer.id)
        session.add(user)
        session.flush()
    return user


class CustomerCache:
    """Customers by shortName, looked up once per transaction."""

    def __init__(self, session: so.Session):
        self.session = session
        self._customers: dict[str, Customer] = {}

    def __getitem__(self, short_name: str) -> Customer:
        return self._customers[short_name]

    def load(self, short_names: set[str]) -> None:
        """Look up many customers in one SELECT; the new ones are created in shortName order."""
        found = self.session.scalars(
            sa.select(Customer).where(Customer.short_name.in_(short_names - set(self._customers)))
        )
        self._customers.update((c.short_name, c) for c in found)
        for short_name in sorted(short_names - set(self._customers)):
            self._customers[short_name] = ensure_customer(self.session, short_name)
