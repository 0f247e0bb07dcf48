from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Base


class DeadSubmission(Base):
    """A submission that could not be made into a job, kept as received until an operator retries it."""

    __tablename__ = "dead_submissions"

    id: so.Mapped[int] = so.mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    # Unique where known: repeated failures of one submission update one row.
    submission_id: so.Mapped[uuid.UUID | None] = so.mapped_column(sa.Uuid)
    # The payload as received: as JSONB, or as JSON text when JSONB cannot hold it (NUL, lone surrogates, NaN).
    payload: so.Mapped[object | None] = so.mapped_column(JSONB(none_as_null=True))
    payload_text: so.Mapped[str | None] = so.mapped_column(sa.Text)
    reason: so.Mapped[str] = so.mapped_column(sa.String(32))  # invalid | refused | redelivered
    error: so.Mapped[str] = so.mapped_column(sa.Text)
    attempts: so.Mapped[int] = so.mapped_column(sa.Integer)
    first_seen: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_seen: so.Mapped[int] = so.mapped_column(sa.BigInteger)

    __table_args__ = (
        sa.CheckConstraint("(payload IS NULL) <> (payload_text IS NULL)", name="one_payload"),
        sa.Index(
            "ix_dead_submissions_submission_id",
            "submission_id",
            unique=True,
            postgresql_where=sa.text("submission_id IS NOT NULL"),
        ),
    )
