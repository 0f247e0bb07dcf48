"""The tests' submission: the seed's example, from the one synthetic submission factory."""

from __future__ import annotations

from app.dev import synthetic

SAMPLE_SHA256 = "8f84837cf04c1694512256ef78fa67c051b92326e31af2598efad37ccd2e01d9"


def submission_payload(
    customer: str = "acme",
    sha256: str = SAMPLE_SHA256,
    *,
    platform: str = "win",
    super_type: str = "executable",
    file_type: str = "PE",
) -> dict:
    """A submission and classification shaped as in the seed's example."""
    return synthetic.submission_payload(
        customer,
        sha256,
        platform=platform,
        super_type=super_type,
        file_type=file_type,
        name="fielname.exe",
        timestamp=123,
    )
