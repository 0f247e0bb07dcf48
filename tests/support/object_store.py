"""An S3 server (moto's) for a test broker that keeps its log through a crash: Tansu's s3:// storage in a bucket of
a server that outlives the broker, so that the records acknowledged before a SIGKILL are there after the restart."""

from __future__ import annotations

import signal
import sys
import urllib.request
from pathlib import Path

from app.dev.processes import HOST
from app.dev.servers import Server, run_server

BUCKET = "tansu"


def start_object_store(log_dir: Path) -> Server:
    """moto's S3 server on 127.0.0.1 with the bucket Tansu keeps its log in; the records live as long as it runs."""

    def probe(port: int, left: float) -> None:
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=min(left, 2)):
            pass

    server = run_server(
        "s3",
        lambda port: [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        None,
        Path(log_dir) / "s3.log",
        probe,
        lambda port: f"http://{HOST}:{port}",
        stop_signal=signal.SIGTERM,
    )
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/{BUCKET}", method="PUT"), timeout=10):
        pass
    return server


def s3_storage(store: Server) -> tuple[str, dict[str, str]]:
    """Tansu's --storage-engine and environment for the bucket of `store` (moto takes any credentials)."""
    return f"s3://{BUCKET}/", {
        "AWS_ENDPOINT": store.url,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "sampledb",
        "AWS_SECRET_ACCESS_KEY": "sampledb",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
