"""GET /metrics (Prometheus text format, no key) and the request hooks that time every request.

Requests are labelled by their URL rule (`/sampledb/v2/job/<job_id>`), never by the raw
path, so no job id or hash reaches a label. Scrapes themselves are not counted.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from app.operations import metrics
from app.operations.vitals import read_vitals

METRICS_PATH = "/metrics"


def register_metrics(app: Flask) -> None:
    """Serve /metrics and time requests, unless SAMPLEDB_METRICS_ENABLED=false (then /metrics is a 404)."""
    settings = app.config["SAMPLEDB"]
    if not settings.metrics_enabled:
        return
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from app.extensions import db

    processes = metrics.process_registry()
    service = CollectorRegistry(auto_describe=False)
    service.register(metrics.ServiceGauges(lambda: read_vitals(db.engine, settings), settings.metrics_cache_seconds))

    @app.get(METRICS_PATH)
    def prometheus_metrics():
        return Response(generate_latest(processes) + generate_latest(service), mimetype=CONTENT_TYPE_LATEST)

    @app.before_request
    def start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response):
        rule = request.url_rule
        if rule is None or rule.rule != METRICS_PATH:
            started = g.get("metrics_started", time.perf_counter())
            metrics.observe_request(
                request.method, rule.rule if rule else None, response.status_code, time.perf_counter() - started
            )
        return response
