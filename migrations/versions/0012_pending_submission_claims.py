"""A pending REST submission's claim: the worker that took it has it until then (SPEC 13.3).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pending_submissions", sa.Column("claimed_until_timestamp", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("pending_submissions", "claimed_until_timestamp")
