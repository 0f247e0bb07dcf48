"""The Celery worker's own metrics port (SAMPLEDB_WORKER_METRICS_PORT): its series summed over its pool processes.

At worker start (before the pool forks) the main process switches to Prometheus'
multiprocess mode on a fresh directory of its own; each pool process writes its series
to files there, and the main process serves their sum over HTTP. A pool process that
ends is marked dead (its counters stay in the sum); the directory goes when the worker stops.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

from app.config import Settings
from app.operations import metrics

log = logging.getLogger(__name__)

_directory: str | None = None


def prepare(settings: Settings) -> None:
    """In the worker's main process, before anything is counted: multiprocess mode on a clean directory."""
    global _directory
    if not settings.metrics_enabled:
        return
    _directory = tempfile.mkdtemp(prefix="sampledb-worker-metrics-")
    metrics.enable_multiprocess(_directory)


def serve(settings: Settings) -> None:
    """Serve the pool's summed series on the metrics port; a port in use is logged, the worker runs on."""
    if _directory is None:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.worker_metrics_port, registry=metrics.process_registry())
    except OSError as err:
        log.warning("worker metrics not served: port %d: %s", settings.worker_metrics_port, err)
        return
    log.info("worker metrics on port %d", settings.worker_metrics_port)


def process_ended(pid: int) -> None:
    if _directory is not None:
        metrics.mark_process_dead(pid)


def remove() -> None:
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
