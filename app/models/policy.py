from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Audited, Base

DEFAULT_POLICY_ID = 1


class AnalysisPolicy(Base):
    """The default analysis policy: the workers a new job starts from and the options they must respect.

    One row (id 1). Workers are kept by shortName, which never changes once registered.
    """

    __tablename__ = "analysis_policy"

    id: so.Mapped[int] = so.mapped_column(sa.Integer, primary_key=True)
    workers: so.Mapped[list] = so.mapped_column(JSONB)  # ["static-analyzer", ...]
    options: so.Mapped[list] = so.mapped_column(JSONB)  # [{"key": ..., "value": ...}, ...]
    last_updated_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_updated_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))

    last_updated_by_user = so.relationship("User", lazy="joined")


class AnalysisRule(Audited, Base):
    """A rule of the default policy: when its match clause fits a submission, its action changes workers/options."""

    __tablename__ = "analysis_rules"

    id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    # Rules apply oldest first; a sequence orders rules made within the same millisecond too.
    position: so.Mapped[int] = so.mapped_column(sa.BigInteger, sa.Identity(), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(1024))
    description: so.Mapped[str] = so.mapped_column(sa.Text)
    # {"customer": [customer ids]} | {"classification": {"type": [...], "superType": [...]}}
    # | {"submission": {"metaDataKey": [...], "metaDataValue": [...] or absent}}
    match: so.Mapped[dict] = so.mapped_column(JSONB)
    # {"workers": {"set"|"add"|"remove": [shortName, ...]}, "options": {"set"|"add": [{key, value}], "remove": [key]}}
    action: so.Mapped[dict] = so.mapped_column(JSONB)

    __table_args__ = (
        # Job creation reads the live rules in order.
        sa.Index("ix_analysis_rules_live_position", "position", postgresql_where=sa.text("NOT deleted")),
    )


class PolicyGeneration(Base):
    """One row: a number PostgreSQL's triggers bump whenever the policy, a rule or the worker registry changes
    (migration 0010), so each process knows when its cached policy snapshot is out of date."""

    __tablename__ = "policy_generation"

    id: so.Mapped[int] = so.mapped_column(sa.SmallInteger, primary_key=True)
    generation: so.Mapped[int] = so.mapped_column(sa.BigInteger)
