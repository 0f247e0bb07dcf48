from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Base


class PendingSubmission(Base):
    """A REST submission committed before its 202 and kept until a Celery worker has made its job (SPEC 13.3)."""

    __tablename__ = "pending_submissions"

    submission_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, primary_key=True)
    # The customer's shortName as submitted (the customer may not exist until ingest creates it).
    customer: so.Mapped[str] = so.mapped_column(sa.String(1024))
    payload: so.Mapped[dict] = so.mapped_column(JSONB)
    received_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger, index=True)
    # Times a worker took it (counted in a transaction of their own, before the work): one that keeps
    # killing its worker process is stored dead after SAMPLEDB_INGEST_MAX_DELIVERIES.
    attempts: so.Mapped[int] = so.mapped_column(sa.Integer, server_default="0")
    # The worker that took it last has it until then (ms, the database's clock); past it, a worker whose
    # host died or was cut off mid-batch has left it to the others.
    claimed_until_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger, nullable=True)
