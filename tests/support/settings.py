"""Settings of the test session's servers, with overrides, as the environment would give them."""

from __future__ import annotations

from app.config import Settings


def make_settings(database_url: str, **overrides: str) -> Settings:
    environ = {"SAMPLEDB_DATABASE_URL": database_url, "SAMPLEDB_SITE": "OSL", **overrides}
    return Settings.from_env(environ)
