from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.models.base import Base


class Customer(Base):
    __tablename__ = "customers"

    id: so.Mapped[int] = so.mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    short_name: so.Mapped[str] = so.mapped_column(sa.String(1024), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(1024))
    domain_id: so.Mapped[int | None] = so.mapped_column(sa.Integer)
    domain_name: so.Mapped[str | None] = so.mapped_column(sa.String(255))

    def to_info(self) -> dict:
        return self.info(self.id, self.short_name, self.name, self.domain_id, self.domain_name)

    @staticmethod
    def info(id_: int, short_name: str, name: str, domain_id: int | None, domain_name: str | None) -> dict:
        """A customer as the API shows it, from its column values (also for rows read without the ORM)."""
        domain = {"id": domain_id, "name": domain_name} if domain_id is not None else None
        return {"id": id_, "shortName": short_name, "name": name, "domain": domain}


class User(Base):
    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    short_name: so.Mapped[str] = so.mapped_column(sa.String(255), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(1024))
    customer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("customers.id"))

    customer: so.Mapped[Customer] = so.relationship(lazy="joined")

    def to_info(self) -> dict:
        return self.info(self.id, self.short_name, self.name, self.customer.to_info())

    @staticmethod
    def info(id_: int, short_name: str, name: str, customer: dict) -> dict:
        """A user as the API shows it, from its column values and its customer's info."""
        return {"id": id_, "shortName": short_name, "name": name, "customer": customer}


class ApiKey(Base):
    """An API key; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: so.Mapped[int] = so.mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    key_hash: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    role: so.Mapped[str] = so.mapped_column(sa.String(32))
    all_customers: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False)
    disabled: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False)
    created_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    expires_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)

    user: so.Mapped[User] = so.relationship(lazy="joined")
    granted_customers: so.Mapped[list[ApiKeyCustomer]] = so.relationship(lazy="selectin", cascade="all, delete-orphan")


class ApiKeyCustomer(Base):
    """A customer a key may see besides its user's own."""

    __tablename__ = "api_key_customers"

    api_key_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    customer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("customers.id"), primary_key=True)
