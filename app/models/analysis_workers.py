from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Base


class AnalysisWorker(Base):
    """A registered analysis worker; a job gets a task for it when the analysis policy names it and its filter
    accepts the sample (app.policy.evaluate)."""

    __tablename__ = "analysis_workers"

    id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    short_name: so.Mapped[str] = so.mapped_column(sa.String(255), unique=True)
    localized_names: so.Mapped[dict] = so.mapped_column(JSONB)
    localized_descriptions: so.Mapped[dict] = so.mapped_column(JSONB)
    result_schema: so.Mapped[dict | None] = so.mapped_column(JSONB)
    # {"type": [...], "superType": [...], "arch": [...], "platform": [...]}; empty accepts all
    accepts: so.Mapped[dict] = so.mapped_column(JSONB, default=dict)
    deleted: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False)
    created_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    created_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    last_updated_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_updated_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    deleted_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    deleted_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))

    created_by_user = so.relationship("User", foreign_keys=[created_by_user_id], lazy="joined")
    last_updated_by_user = so.relationship("User", foreign_keys=[last_updated_by_user_id], lazy="joined")
    deleted_by_user = so.relationship("User", foreign_keys=[deleted_by_user_id], lazy="joined")

