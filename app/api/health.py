"""Liveness and readiness (no key needed)."""

from __future__ import annotations

from typing import Any

import kombu
import marshmallow as ma
import sqlalchemy as sa
from flask import current_app
from kafka import KafkaAdminClient
from marshmallow import fields

from app.api.base import BASE_PATH, Blueprint
from app.api.envelope import envelope, message
from app.api.schemas import envelope_schema
from app.dispatch import redis_connection
from app.extensions import current_settings, db

blp = Blueprint("health", __name__, url_prefix=BASE_PATH, description="Liveness and readiness")
PART_STATE: dict[str, Any] = {"metadata": {"description": "ok"}}


class LivenessSchema(ma.Schema):
    status = fields.String(**PART_STATE)


class ReadinessSchema(ma.Schema):
    postgresql = fields.String(**PART_STATE)
    redis = fields.String(**PART_STATE)
    celeryBroker = fields.String(
        metadata={
            "description": "ok: Celery's broker (the same Redis unless SAMPLEDB_CELERY_BROKER_URL names RabbitMQ)"
        }
    )
    kafka = fields.String(**PART_STATE)


@blp.route("/healthz")
@blp.doc(security=[])
@blp.response(200, envelope_schema(LivenessSchema))
def healthz():
    """Liveness: the process answers"""
    return envelope({"status": "ok"})


def _check_database() -> None:
    # A connection of the pool, as a request would get one (not the session, which a caller may have bound).
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _check_redis() -> None:
    settings = current_settings()
    client = redis_connection(settings.redis_url, timeout=1, sentinel_master=settings.redis_sentinel_master)
    try:
        client.ping()
    finally:
        client.close()


def _check_rabbitmq() -> None:
    with kombu.Connection(current_settings().celery_broker, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=1)


def _check_kafka() -> None:
    # A Kafka ApiVersions round trip through kafka-python's own client proves the broker speaks the protocol.
    # kafka-python 3 names the bootstrap wait bootstrap_timeout_ms (2.x: api_version_auto_timeout_ms).
    admin = KafkaAdminClient(
        bootstrap_servers=current_settings().kafka_bootstrap_servers.split(","),
        request_timeout_ms=2000,
        bootstrap_timeout_ms=2000,
        client_id="sampledb-jobs-readyz",
        **current_settings().kafka_client_options,
    )
    admin.close()


CHECKS = {"postgresql": _check_database, "redis": _check_redis, "celeryBroker": _check_rabbitmq, "kafka": _check_kafka}
# The API needs only PostgreSQL to answer: Redis and Kafka are reported, never a reason to take the host
# out of service (the outbox and the pending submissions exist so the API serves through their outages).
DECIDES_READINESS = ("postgresql",)


@blp.route("/readyz")
@blp.doc(security=[])
@blp.response(200, envelope_schema(ReadinessSchema))
@blp.alt_response(503, response="SERVICE_UNAVAILABLE", description="PostgreSQL does not answer")
def readyz():
    """Readiness: 503 only when PostgreSQL does not answer; Redis, Celery's broker and Kafka are reported in the
    body (a WARNING message for each one that does not answer)"""
    results, problems = {}, []
    for name, check in CHECKS.items():
        if name == "celeryBroker" and not current_settings().broker_is_amqp:
            results[name] = results["redis"]  # that Redis is the broker: checked once, reported once
            continue
        try:
            check()
            results[name] = "ok"
        except Exception as err:  # any failure means "unavailable", never a 500
            current_app.logger.warning("readiness check %s failed: %s", name, err)
            results[name] = "unavailable"
            problems.append((name, f"{name} is not reachable: {type(err).__name__}"))
    if any(name in DECIDES_READINESS for name, _ in problems):
        # An error like any other (§5.2): data null, one message per unavailable part.
        return envelope(None, 503, messages=[message("ACTION_ERROR", text) for _, text in problems])
    return envelope(results, 200, messages=[message("WARNING", text) for _, text in problems])
