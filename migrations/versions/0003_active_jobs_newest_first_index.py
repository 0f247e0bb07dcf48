"""Index the active jobs newest first, with ids ascending among equal timestamps.

`sortBy: -enqueuedTimestamp` breaks ties by ascending id (stable paging); the ascending
index cannot serve that mixed order, so deep pages of the default list sorted newest
first had to sort every active job.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_active_enqueued_newest",
        "jobs",
        [sa.text("enqueued_timestamp DESC"), "id"],
        postgresql_where=sa.text("state IN ('enqueued', 'executing')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_active_enqueued_newest", table_name="jobs")
