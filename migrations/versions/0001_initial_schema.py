"""Jobs, tasks, history, analysis workers, customers, users, API keys and the outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 21:06:52.703333
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("short_name", sa.String(length=1024), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("domain_name", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("short_name", name=op.f("uq_customers_short_name")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("sent_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index(
        "ix_outbox_unsent", "outbox", ["id"], unique=False, postgresql_where=sa.text("sent_timestamp IS NULL")
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("short_name", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name=op.f("fk_users_customer_id_customers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("short_name", name=op.f("uq_users_short_name")),
    )
    op.create_table(
        "analysis_workers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("short_name", sa.String(length=255), nullable=False),
        sa.Column("localized_names", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("localized_descriptions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("result_schema", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("accepts", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("created_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("created_by_user_id", sa.Integer(), nullable=True),
        sa.Column("last_updated_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_updated_by_user_id", sa.Integer(), nullable=True),
        sa.Column("deleted_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("deleted_by_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_user_id"], ["users.id"], name=op.f("fk_analysis_workers_created_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["deleted_by_user_id"], ["users.id"], name=op.f("fk_analysis_workers_deleted_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["last_updated_by_user_id"], ["users.id"], name=op.f("fk_analysis_workers_last_updated_by_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analysis_workers")),
        sa.UniqueConstraint("short_name", name=op.f("uq_analysis_workers_short_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("all_customers", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("expires_timestamp", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_user_id"), "api_keys", ["user_id"], unique=False)
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("abort_requested", sa.Boolean(), nullable=False),
        sa.Column("site", sa.String(length=32), nullable=False),
        sa.Column("sample_sha256", sa.String(length=64), nullable=False),
        sa.Column("sample_size", sa.BigInteger(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("submission", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("classification", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("enqueued_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("start_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("end_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("last_updated_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_updated_by_user_id", sa.Integer(), nullable=True),
        sa.Column("abort_requested_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("abort_requested_by_user_id", sa.Integer(), nullable=True),
        sa.Column("abort_reason", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('enqueued', 'executing', 'done', 'failed', 'timeout', 'aborted')", name=op.f("ck_jobs_state")
        ),
        sa.ForeignKeyConstraint(
            ["abort_requested_by_user_id"], ["users.id"], name=op.f("fk_jobs_abort_requested_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name=op.f("fk_jobs_customer_id_customers")),
        sa.ForeignKeyConstraint(
            ["last_updated_by_user_id"], ["users.id"], name=op.f("fk_jobs_last_updated_by_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_jobs_submission_id")),
    )
    op.create_index(
        "ix_jobs_abort_pending",
        "jobs",
        ["abort_requested_timestamp"],
        unique=False,
        postgresql_where=sa.text("abort_requested AND state IN ('enqueued', 'executing')"),
    )
    op.create_index(
        "ix_jobs_active_enqueued",
        "jobs",
        ["enqueued_timestamp", "id"],
        unique=False,
        postgresql_where=sa.text("state IN ('enqueued', 'executing')"),
    )
    op.create_index(
        "ix_jobs_customer_state_enqueued", "jobs", ["customer_id", "state", "enqueued_timestamp"], unique=False
    )
    op.create_index(
        "ix_jobs_enqueued_enqueued",
        "jobs",
        ["enqueued_timestamp"],
        unique=False,
        postgresql_where=sa.text("state = 'enqueued'"),
    )
    op.create_index(
        "ix_jobs_executing_last_updated",
        "jobs",
        ["last_updated_timestamp"],
        unique=False,
        postgresql_where=sa.text("state = 'executing'"),
    )
    op.create_index("ix_jobs_sample_sha256", "jobs", ["sample_sha256"], unique=False)
    op.create_index("ix_jobs_state_end", "jobs", ["state", "end_timestamp"], unique=False)
    op.create_index("ix_jobs_state_enqueued", "jobs", ["state", "enqueued_timestamp", "id"], unique=False)
    op.create_index("ix_jobs_state_last_updated", "jobs", ["state", "last_updated_timestamp"], unique=False)
    op.create_index("ix_jobs_state_start", "jobs", ["state", "start_timestamp"], unique=False)
    op.create_table(
        "api_key_customers",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_api_key_customers_api_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_api_key_customers_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("api_key_id", "customer_id", name=op.f("pk_api_key_customers")),
    )
    op.create_table(
        "job_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_history_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_job_history_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_history")),
    )
    op.create_index("ix_job_history_job_id_id", "job_history", ["job_id", "id"], unique=False)
    op.create_table(
        "job_tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("enqueued_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("start_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("end_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("last_updated_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("analyses", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('enqueued', 'executing', 'success', 'failed', 'timeout', 'cancelled')",
            name=op.f("ck_job_tasks_state"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_tasks_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_tasks")),
    )
    op.create_index(op.f("ix_job_tasks_job_id"), "job_tasks", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_tasks_job_id"), table_name="job_tasks")
    op.drop_table("job_tasks")
    op.drop_index("ix_job_history_job_id_id", table_name="job_history")
    op.drop_table("job_history")
    op.drop_table("api_key_customers")
    op.drop_index("ix_jobs_state_start", table_name="jobs")
    op.drop_index("ix_jobs_state_last_updated", table_name="jobs")
    op.drop_index("ix_jobs_state_enqueued", table_name="jobs")
    op.drop_index("ix_jobs_state_end", table_name="jobs")
    op.drop_index("ix_jobs_sample_sha256", table_name="jobs")
    op.drop_index("ix_jobs_executing_last_updated", table_name="jobs", postgresql_where=sa.text("state = 'executing'"))
    op.drop_index("ix_jobs_enqueued_enqueued", table_name="jobs", postgresql_where=sa.text("state = 'enqueued'"))
    op.drop_index("ix_jobs_customer_state_enqueued", table_name="jobs")
    op.drop_index(
        "ix_jobs_active_enqueued", table_name="jobs", postgresql_where=sa.text("state IN ('enqueued', 'executing')")
    )
    op.drop_index(
        "ix_jobs_abort_pending",
        table_name="jobs",
        postgresql_where=sa.text("abort_requested AND state IN ('enqueued', 'executing')"),
    )
    op.drop_table("jobs")
    op.drop_index(op.f("ix_api_keys_user_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("analysis_workers")
    op.drop_table("users")
    op.drop_index("ix_outbox_unsent", table_name="outbox", postgresql_where=sa.text("sent_timestamp IS NULL"))
    op.drop_table("outbox")
    op.drop_table("customers")
