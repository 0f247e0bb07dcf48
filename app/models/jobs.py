from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Base

ACTIVE = "state IN ('enqueued', 'executing')"
INGESTED = "NOT reanalysis"


class Job(Base):
    """The analysis of one sample; changed only through app.jobs.service."""

    __tablename__ = "jobs"

    id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    state: so.Mapped[str] = so.mapped_column(sa.String(16))
    abort_requested: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False)
    site: so.Mapped[str] = so.mapped_column(sa.String(32))
    sample_sha256: so.Mapped[str] = so.mapped_column(sa.String(64))
    sample_size: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    customer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("customers.id"))
    # A database constraint makes ingest idempotent: a redelivered submission cannot make a second job
    # (ix_jobs_submission_id_ingested). A reanalysis job repeats the id of the submission it re-runs.
    submission_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid)
    reanalysis: so.Mapped[bool] = so.mapped_column(sa.Boolean, default=False, server_default=sa.false())
    submission: so.Mapped[dict] = so.mapped_column(JSONB)
    classification: so.Mapped[dict] = so.mapped_column(JSONB)
    enqueued_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    start_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    end_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    last_updated_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_updated_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    abort_requested_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    abort_requested_by_user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    abort_reason: so.Mapped[str | None] = so.mapped_column(sa.Text)
    message: so.Mapped[str | None] = so.mapped_column(sa.Text)
    # The options the analysis policy gave the job: [{"key": ..., "value": ...}]
    options: so.Mapped[list] = so.mapped_column(JSONB, default=list, server_default=sa.text("'[]'::jsonb"))

    customer = so.relationship("Customer", lazy="joined")
    last_updated_by_user = so.relationship("User", foreign_keys=[last_updated_by_user_id], lazy="joined")
    abort_requested_by_user = so.relationship("User", foreign_keys=[abort_requested_by_user_id], lazy="joined")
    tasks: so.Mapped[list[JobTask]] = so.relationship(
        back_populates="job", lazy="selectin", order_by="JobTask.worker", cascade="all, delete-orphan"
    )

    __table_args__ = (
        # The default list: active jobs by enqueuedTimestamp (id breaks ties for stable paging).
        sa.Index("ix_jobs_active_enqueued", "enqueued_timestamp", "id", postgresql_where=sa.text(ACTIVE)),
        # The same newest first: `sortBy: -enqueuedTimestamp` keeps ids ascending among ties.
        sa.Index(
            "ix_jobs_active_enqueued_newest", sa.text("enqueued_timestamp DESC"), "id", postgresql_where=sa.text(ACTIVE)
        ),
        # Sweeps: only the active jobs are indexed, so the cost follows them, not the table.
        sa.Index(
            "ix_jobs_executing_last_updated", "last_updated_timestamp", postgresql_where=sa.text("state = 'executing'")
        ),
        sa.Index("ix_jobs_enqueued_enqueued", "enqueued_timestamp", postgresql_where=sa.text("state = 'enqueued'")),
        sa.Index(
            "ix_jobs_abort_pending",
            "abort_requested_timestamp",
            postgresql_where=sa.text(f"abort_requested AND {ACTIVE}"),
        ),
        sa.Index("ix_jobs_customer_state_enqueued", "customer_id", "state", "enqueued_timestamp"),
        sa.Index("ix_jobs_state_enqueued", "state", "enqueued_timestamp", "id"),
        sa.Index("ix_jobs_state_start", "state", "start_timestamp"),
        sa.Index("ix_jobs_state_end", "state", "end_timestamp"),
        sa.Index("ix_jobs_state_last_updated", "state", "last_updated_timestamp"),
        sa.Index("ix_jobs_sample_sha256", "sample_sha256"),
        sa.Index("ix_jobs_submission_id_ingested", "submission_id", unique=True, postgresql_where=sa.text(INGESTED)),
        # At most one active reanalysis job per sample and customer, whatever the callers do. Not over all
        # jobs: ingest may make several active jobs for one sample and customer from different submissions.
        sa.Index(
            "ix_jobs_active_reanalysis",
            "sample_sha256",
            "customer_id",
            unique=True,
            postgresql_where=sa.text(f"reanalysis AND {ACTIVE}"),
        ),
        sa.CheckConstraint("state IN ('enqueued', 'executing', 'done', 'failed', 'timeout', 'aborted')", name="state"),
    )


class JobTask(Base):
    """The part of a job one analysis worker does."""

    __tablename__ = "job_tasks"

    id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    job_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    worker: so.Mapped[str] = so.mapped_column(sa.String(255))
    state: so.Mapped[str] = so.mapped_column(sa.String(16))
    enqueued_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    start_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    end_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    last_updated_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    analyses: so.Mapped[list] = so.mapped_column(JSONB, default=list)
    message: so.Mapped[str | None] = so.mapped_column(sa.Text)

    job: so.Mapped[Job] = so.relationship(back_populates="tasks")

    __table_args__ = (
        sa.CheckConstraint(
            "state IN ('enqueued', 'executing', 'success', 'failed', 'timeout', 'cancelled')", name="state"
        ),
    )


class JobHistory(Base):
    """One recorded change of a job or one of its tasks: who, when, from, to, message."""

    __tablename__ = "job_history"

    id: so.Mapped[int] = so.mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    job_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    task_id: so.Mapped[uuid.UUID | None] = so.mapped_column(sa.Uuid)
    timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    from_state: so.Mapped[str | None] = so.mapped_column(sa.String(16))
    to_state: so.Mapped[str] = so.mapped_column(sa.String(16))
    message: so.Mapped[str | None] = so.mapped_column(sa.Text)

    user = so.relationship("User", lazy="joined")

    __table_args__ = (sa.Index("ix_job_history_job_id_id", "job_id", "id"),)
