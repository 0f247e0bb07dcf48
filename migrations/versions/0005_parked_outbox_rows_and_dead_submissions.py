"""Parked outbox rows and dead submissions (failure handling).

The relay claims a row only when no earlier unsent row of its key waits: an index on
(key, id) over the unsent rows answers that per row. A row the broker can never take is
parked (`parked_timestamp`, its error in `last_error`) until an operator retries it.
A submission that cannot be ingested is kept in `dead_submissions`, one row per
submission id where the payload names a valid one.

Revision ID: 0005
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("parked_timestamp", sa.BigInteger(), nullable=True))
    op.create_index("ix_outbox_unsent_key", "outbox", ["key", "id"], postgresql_where=sa.text("sent_timestamp IS NULL"))
    op.create_index(
        "ix_outbox_parked",
        "outbox",
        ["id"],
        postgresql_where=sa.text("parked_timestamp IS NOT NULL AND sent_timestamp IS NULL"),
    )
    op.create_table(
        "dead_submissions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("payload_text", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_submissions")),
        sa.CheckConstraint("(payload IS NULL) <> (payload_text IS NULL)", name=op.f("ck_dead_submissions_one_payload")),
    )
    op.create_index(
        "ix_dead_submissions_submission_id",
        "dead_submissions",
        ["submission_id"],
        unique=True,
        postgresql_where=sa.text("submission_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_dead_submissions_submission_id", table_name="dead_submissions")
    op.drop_table("dead_submissions")
    op.drop_index("ix_outbox_parked", table_name="outbox")
    op.drop_index("ix_outbox_unsent_key", table_name="outbox")
    op.drop_column("outbox", "parked_timestamp")
