"""Retention and operations: index the sent outbox rows by sent time; record when each periodic task last ran.

The purge deletes sent outbox rows older than the retention through `ix_outbox_sent`
(unsent rows are outside it). Final jobs are found through the existing
`ix_jobs_state_end` (state, end_timestamp). `sweep_runs` keeps, per sweep and for the
purge, when it last finished and what it moved, for `sampledb-jobs status`.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_sent", "outbox", ["sent_timestamp"], postgresql_where=sa.text("sent_timestamp IS NOT NULL")
    )
    op.create_table(
        "sweep_runs",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("expected_since_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("last_run_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("last_moved", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sweep_runs")),
    )


def downgrade() -> None:
    op.drop_table("sweep_runs")
    op.drop_index("ix_outbox_sent", table_name="outbox")
