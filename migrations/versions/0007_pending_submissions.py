"""Pending submissions: a REST submission is committed before its 202, until a worker makes its job.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_submissions",
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("customer", sa.String(length=1024), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_timestamp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("submission_id", name=op.f("pk_pending_submissions")),
    )
    op.create_index(op.f("ix_pending_submissions_received_timestamp"), "pending_submissions", ["received_timestamp"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pending_submissions_received_timestamp"), table_name="pending_submissions")
    op.drop_table("pending_submissions")
