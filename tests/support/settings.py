"""Settings of the test session's servers, with overrides, as the environment would give them."""

from __future__ import annotations

import os

from app.config import Settings

# `transaction`: the session's database is reached through a PgBouncer in transaction mode (tests.support.pgbouncer),
# and every setting and worker the tests make says so.
DATABASE_POOLER = os.environ.get("SAMPLEDB_DATABASE_POOLER", "none")


def make_settings(database_url: str, **overrides: str) -> Settings:
    # The default policy cache: a policy change must reach the next job through the generation alone.
    environ = {
        "SAMPLEDB_DATABASE_URL": database_url,
        "SAMPLEDB_SITE": "OSL",
        "SAMPLEDB_DATABASE_POOLER": DATABASE_POOLER,
        **overrides,
    }
    return Settings.from_env(environ)
