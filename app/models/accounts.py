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
        domain = {"id": self.domain_id, "name": self.domain_name} if self.domain_id is not None else None
        return {"id": self.id, "shortName": self.short_name, "name": self.name, "domain": domain}


class User(Base):
    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    short_name: so.Mapped[str] = so.mapped_column(sa.String(255), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(1024))
    customer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("customers.id"))

    customer: so.Mapped[Customer] = so.relationship(lazy="joined")

    def to_info(self) -> dict:
        return {"id": self.id, "shortName": self.short_name, "name": self.name, "customer": self.customer.to_info()}


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
    granted_customers: so.Mapped[list["ApiKeyCustomer"]] = so.relationship(lazy="selectin", cascade="all, delete-orphan")


class ApiKeyCustomer(Base):
    """A customer a key may see besides its user's own."""

    __tablename__ = "api_key_customers"

    api_key_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    customer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("customers.id"), primary_key=True)
