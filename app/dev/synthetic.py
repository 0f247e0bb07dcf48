"""Synthetic submissions, shaped as the seed's creation message shows them (SPEC §6.1).

One factory for the demo, the benchmarks and the tests: `submission_payload` makes one
with given fields, `random_submission` one of a realistic mix of customers and file kinds.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid

CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli"]
# (type, superType, arch, platform, mimeType, file name)
CLASSIFICATIONS = [
    ("PE", "executable", "x86", "win", "application/vnd.microsoft.portable-executable", "invoice.exe"),
    ("PE", "executable", "x86_64", "win", "application/x-dosexec", "setup.exe"),
    ("DLL", "executable", "x86_64", "win", "application/x-dosexec", "helper.dll"),
    ("ELF", "executable", "x86_64", "linux", "application/x-executable", "kworker"),
    ("ELF", "executable", "arm", "linux", "application/x-executable", "mirai.arm7"),
    ("APK", "archive", None, "android", "application/vnd.android.package-archive", "flashlight.apk"),
    ("MachO", "executable", "arm64", "macos", "application/x-mach-binary", "Updater"),
    (
        "DOCX",
        "document",
        None,
        None,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "Q3-report.docx",
    ),
    ("PDF", "document", None, None, "application/pdf", "statement.pdf"),
    ("JS", "script", None, None, "text/javascript", "payload.js"),
]


def random_sha256(rng: random.Random | None = None) -> str:
    return hashlib.sha256((rng or random).randbytes(32)).hexdigest()


def submission_payload(
    customer: str = "acme",
    sha256: str | None = None,
    *,
    file_type: str = "PE",
    super_type: str = "executable",
    arch: str | None = "x86",
    platform: str | None = "win",
    name: str = "sample.exe",
    mime_type: str = "application/octet-stream",
    tlp: str = "white",
    timestamp: int | None = None,
    meta_data: dict | None = None,
    user_agent: str = "python-requests",
) -> dict:
    """A submission and its classification; `timestamp` (ms) defaults to now, the sha256 to a random one."""
    sha256 = sha256 or random_sha256()
    timestamp = int(time.time() * 1000) if timestamp is None else timestamp
    classification = {
        "sample": sha256,
        "classificationID": str(uuid.uuid4()),
        "createdTimestamp": timestamp,
        "version": "1",
        "type": file_type,
        "superType": super_type,
        "meta": {},
    }
    if arch is not None:
        classification["arch"] = arch
    if platform is not None:
        classification["platform"] = platform
    return {
        "submission": {
            "id": str(uuid.uuid4()),
            "customer": customer,
            "sample": {"id": sha256},
            "createdByUser": {"id": 0, "shortName": "sn", "name": "name", "customer": None, "domain": None},
            "createdTimestamp": timestamp,
            "name": name,
            "timestamp": timestamp + 1,
            "mimeType": mime_type,
            "metaData": {"key": "value"} if meta_data is None else meta_data,
            "tlp": tlp,
            "acl": [],
            "userAgent": {"name": user_agent, "version": "3"},
        },
        "classification": classification,
    }


def random_submission(rng: random.Random, customer: str | None = None, **fields) -> dict:
    """A submission of a random customer (or `customer`) and file kind, from `rng` (seed it for a repeatable run)."""
    file_type, super_type, arch, platform, mime, name = rng.choice(CLASSIFICATIONS)
    return submission_payload(
        customer or rng.choice(CUSTOMERS),
        random_sha256(rng),
        file_type=file_type,
        super_type=super_type,
        arch=arch,
        platform=platform,
        name=name,
        mime_type=mime,
        tlp=rng.choice(["white", "green", "amber", "red"]),
        **fields,
    )
