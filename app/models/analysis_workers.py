from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Audited, Base


class AnalysisWorker(Audited, Base):
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
