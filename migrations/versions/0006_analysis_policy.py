"""The default analysis policy and its rules; job options; reanalysis jobs.

The policy starts with every registered, non-deleted worker and no options, so a job gets
the same tasks as before: each worker's own classification filter still applies after it.

Reanalysis jobs repeat the submission id of the submission they re-run, so the submission id
is unique only among ingested jobs; a second partial index allows one active reanalysis job
per sample and customer.

Revision ID: 0006
Revises: 0003
"""

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('enqueued', 'executing')"


def upgrade() -> None:
    op.create_table(
        "analysis_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workers", postgresql.JSONB(), nullable=False),
        sa.Column("options", postgresql.JSONB(), nullable=False),
        sa.Column("last_updated_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_updated_by_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["last_updated_by_user_id"], ["users.id"], name=op.f("fk_analysis_policy_last_updated_by_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analysis_policy")),
    )
    op.create_table(
        "analysis_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("match", postgresql.JSONB(), nullable=False),
        sa.Column("action", postgresql.JSONB(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("created_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("created_by_user_id", sa.Integer(), nullable=True),
        sa.Column("last_updated_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_updated_by_user_id", sa.Integer(), nullable=True),
        sa.Column("deleted_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("deleted_by_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_user_id"], ["users.id"], name=op.f("fk_analysis_rules_created_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["last_updated_by_user_id"], ["users.id"], name=op.f("fk_analysis_rules_last_updated_by_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["deleted_by_user_id"], ["users.id"], name=op.f("fk_analysis_rules_deleted_by_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analysis_rules")),
        sa.UniqueConstraint("position", name=op.f("uq_analysis_rules_position")),
    )
    op.create_index(
        "ix_analysis_rules_live_position", "analysis_rules", ["position"], postgresql_where=sa.text("NOT deleted")
    )
    op.execute(
        sa.text(
            "INSERT INTO analysis_policy (id, workers, options, last_updated_timestamp) "
            "SELECT 1, coalesce(jsonb_agg(short_name ORDER BY short_name), '[]'::jsonb), '[]'::jsonb, :now "
            "FROM analysis_workers WHERE NOT deleted"
        ).bindparams(now=int(time.time() * 1000))
    )

    op.add_column(
        "jobs", sa.Column("options", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False)
    )
    op.add_column("jobs", sa.Column("reanalysis", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(
        "ix_jobs_submission_id_ingested",
        "jobs",
        ["submission_id"],
        unique=True,
        postgresql_where=sa.text("NOT reanalysis"),
    )
    op.drop_constraint("uq_jobs_submission_id", "jobs", type_="unique")
    op.create_index(
        "ix_jobs_active_reanalysis",
        "jobs",
        ["sample_sha256", "customer_id"],
        unique=True,
        postgresql_where=sa.text(f"reanalysis AND {ACTIVE}"),
    )


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE reanalysis")
    op.drop_index("ix_jobs_active_reanalysis", table_name="jobs")
    op.create_unique_constraint("uq_jobs_submission_id", "jobs", ["submission_id"])
    op.drop_index("ix_jobs_submission_id_ingested", table_name="jobs")
    op.drop_column("jobs", "reanalysis")
    op.drop_column("jobs", "options")
    op.drop_index("ix_analysis_rules_live_position", table_name="analysis_rules")
    op.drop_table("analysis_rules")
    op.drop_table("analysis_policy")
