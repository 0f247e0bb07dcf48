"""Settings of the test session's servers, with overrides, as the environment would give them."""

from __future__ import annotations

from app.config import Settings


def make_settings(database_url: str, **overrides: str) -> Settings:
    # Tests change the analysis policy between jobs: every job reads it afresh.
    environ = {
        "SAMPLEDB_DATABASE_URL": database_url,
        "SAMPLEDB_SITE": "OSL",
        "SAMPLEDB_POLICY_CACHE_SECONDS": "0",
        **overrides,
    }
    return Settings.from_env(environ)
