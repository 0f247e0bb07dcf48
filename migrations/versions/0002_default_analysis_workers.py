"""Register the default analysis workers of a fresh installation.

Revision ID: 0002
Revises: 0001
"""

import time
import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_WORKERS = [
    (
        "static-analyzer",
        "Static analyzer",
        "Statisk analyse",
        "Static analysis of every sample: hashes, strings, file format structure, signatures.",
        {},
    ),
    (
        "sandbox-windows",
        "Windows sandbox",
        "Windows-sandkasse",
        "Dynamic analysis of Windows samples in an instrumented virtual machine.",
        {"platform": ["win"]},
    ),
    (
        "sandbox-linux",
        "Linux sandbox",
        "Linux-sandkasse",
        "Dynamic analysis of Linux samples in an instrumented virtual machine.",
        {"platform": ["linux"]},
    ),
    (
        "sandbox-android",
        "Android sandbox",
        "Android-sandkasse",
        "Dynamic analysis of Android applications in an emulator.",
        {"platform": ["android"]},
    ),
    (
        "sandbox-macos",
        "macOS sandbox",
        "macOS-sandkasse",
        "Dynamic analysis of macOS samples in an instrumented virtual machine.",
        {"platform": ["macos", "osx"]},
    ),
    (
        "document-analyzer",
        "Document analyzer",
        "Dokumentanalyse",
        "Macros, embedded objects and exploits in office documents and PDFs.",
        {"superType": ["document"]},
    ),
]

workers = sa.table(
    "analysis_workers",
    sa.column("id", sa.Uuid),
    sa.column("short_name", sa.String),
    sa.column("localized_names", postgresql.JSONB),
    sa.column("localized_descriptions", postgresql.JSONB),
    sa.column("accepts", postgresql.JSONB),
    sa.column("deleted", sa.Boolean),
    sa.column("created_timestamp", sa.BigInteger),
    sa.column("last_updated_timestamp", sa.BigInteger),
)


def upgrade() -> None:
    now = int(time.time() * 1000)
    op.bulk_insert(
        workers,
        [
            {
                "id": uuid.uuid5(uuid.NAMESPACE_URL, f"sampledb-worker:{short_name}"),
                "short_name": short_name,
                "localized_names": {"english": english, "norwegian": norwegian},
                "localized_descriptions": {"english": description},
                "accepts": accepts,
                "deleted": False,
                "created_timestamp": now,
                "last_updated_timestamp": now,
            }
            for short_name, english, norwegian, description, accepts in DEFAULT_WORKERS
        ],
    )


def downgrade() -> None:
    op.execute(workers.delete().where(workers.c.short_name.in_([w[0] for w in DEFAULT_WORKERS])))
