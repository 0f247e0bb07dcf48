from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import sqlalchemy as sa
import sqlalchemy.orm as so

# Set before the first migration so every constraint and index has a predictable name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(so.DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

    if TYPE_CHECKING:
        # Every model is a declarative table (__tablename__ and mapped columns), so its __table__ is a
        # Table; DeclarativeBase types it as any FromClause a class could be mapped to.
        __table__: ClassVar[sa.Table]


class Audited:
    """A registry entry (an analysis worker, a policy rule) that is soft-deleted, and who made, last
    changed and deleted it, and when."""

    deleted: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False)
    created_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    created_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    last_updated_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_updated_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    deleted_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    deleted_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))

    @so.declared_attr
    def created_by_user(cls):
        return so.relationship("User", foreign_keys=[cls.created_by_user_id], lazy="joined")

    @so.declared_attr
    def last_updated_by_user(cls):
        return so.relationship("User", foreign_keys=[cls.last_updated_by_user_id], lazy="joined")

    @so.declared_attr
    def deleted_by_user(cls):
        return so.relationship("User", foreign_keys=[cls.deleted_by_user_id], lazy="joined")
