"""The scheduler lease: however many beat processes run, the one holding this row schedules (SPEC 13.1).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("held_since_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("expires_timestamp", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scheduler_leases")
