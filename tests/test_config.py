"""§7: every setting from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from app.config import ConfigError, Settings
from app.factory import create_app

SECONDS = ["abc", "1.5", "0", "-5", "1_000", "٣", "", "99999999999"]
BAD_VALUES = {
    "SAMPLEDB_DATABASE_URL": ["mysql://root@localhost/db", "", "   ", "127.0.0.1:5432", "sqlite:///x.db"],
    "SAMPLEDB_REDIS_URL": ["http://127.0.0.1:6379", "", "127.0.0.1:6379"],
    "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS": ["", "localhost", "host:port", "a:1,b", "a:99999", "a :1", ",", "a:0"],
    "SAMPLEDB_CELERY_BROKER_URL": ["http://mq:5672", "127.0.0.1:5672", "kafka://x"],
    "SAMPLEDB_REDIS_SENTINEL_MASTER": ["", "   "],
    "SAMPLEDB_KAFKA_SECURITY_PROTOCOL": ["", "TLS", "SASL", "SSL_SASL"],
    "SAMPLEDB_KAFKA_SASL_MECHANISM": ["MD5", "GSSAPI", "PLAIN"],  # PLAIN alone: the protocol is PLAINTEXT
    "SAMPLEDB_KAFKA_SASL_USERNAME": ["sampledb"],  # without a mechanism
    "SAMPLEDB_KAFKA_SASL_PASSWORD": ["secret"],
    "SAMPLEDB_KAFKA_SSL_CAFILE": ["/nonexistent/ca.pem", "/"],
    "SAMPLEDB_DATABASE_POOLER": ["", "pgbouncer", "session"],
    "SAMPLEDB_SITE": ["", "O/S", "OSL SVG", "x" * 33, "Ø", "OSL\nSVG"],
    "SAMPLEDB_EXECUTION_TIMEOUT_SECONDS": SECONDS,
    "SAMPLEDB_ENQUEUED_TIMEOUT_SECONDS": ["abc", "1.5", "-1", "", "99999999999"],
    "SAMPLEDB_ABORT_GRACE_SECONDS": SECONDS,
    "SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS": SECONDS,
    "SAMPLEDB_API_KEY_CACHE_SECONDS": ["abc", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_POLICY_CACHE_SECONDS": ["abc", "-1", "2.5", "", "99999999999"],
    "SAMPLEDB_DUPLICATE_WINDOW_SECONDS": ["abc", "-1", "2.5", "", "99999999999"],
    "SAMPLEDB_SWEEP_INTERVAL_SECONDS": SECONDS,
    "SAMPLEDB_OUTBOX_RELAY_INTERVAL_SECONDS": SECONDS,
    "SAMPLEDB_SCHEDULER_LEASE_SECONDS": SECONDS,
    "SAMPLEDB_SWEEP_BATCH_SIZE": ["abc", "0", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_FALLBACK_WORKER": ["", "has space", "a/b", "ünï"],
    "SAMPLEDB_OUTBOX_MAX_ATTEMPTS": ["abc", "0", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_KAFKA_MAX_REQUEST_BYTES": ["abc", "0", "1e6", "1_048_576"],
    "SAMPLEDB_INGEST_MAX_DELIVERIES": ["abc", "0", "-1", "2.5"],
    "SAMPLEDB_API_PORT": ["http", "0", "65536", "-80", "80.5"],
    "SAMPLEDB_FLOWER_PORT": ["http", "0", "65536"],
    "SAMPLEDB_OUTBOX_RETENTION_HOURS": ["abc", "0", "-1", "1.5", "9" * 5000],
    "SAMPLEDB_JOB_RETENTION_DAYS": ["abc", "-1", "1.5", "", "99999999999"],
    "SAMPLEDB_PURGE_INTERVAL_SECONDS": SECONDS,
    "SAMPLEDB_PURGE_BATCH_SIZE": ["abc", "0", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_METRICS_ENABLED": ["", "maybe", "2", "tru"],
    "SAMPLEDB_METRICS_CACHE_SECONDS": ["abc", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_WORKER_METRICS_PORT": ["http", "0", "65536"],
    "SAMPLEDB_STATUS_OUTBOX_MAX_AGE_SECONDS": SECONDS,
    "SAMPLEDB_STATUS_QUEUE_MAX_LENGTH": ["abc", "0", "-1", "2.5", "9" * 5000],
    "SAMPLEDB_API_STATEMENT_TIMEOUT_MS": SECONDS,
    "SAMPLEDB_API_LOCK_TIMEOUT_MS": SECONDS,
    "SAMPLEDB_WORKER_STATEMENT_TIMEOUT_MS": SECONDS,
    "SAMPLEDB_WORKER_LOCK_TIMEOUT_MS": SECONDS,
    "SAMPLEDB_DATABASE_CONNECT_TIMEOUT_SECONDS": SECONDS,
    "SAMPLEDB_PENDING_INGEST_INTERVAL_SECONDS": SECONDS,
    "SAMPLEDB_PENDING_CLAIM_SECONDS": SECONDS,
    "SAMPLEDB_TASK_SOFT_TIME_LIMIT_SECONDS": SECONDS,
    "SAMPLEDB_TASK_TIME_LIMIT_SECONDS": SECONDS,
}
CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


def test_every_setting_has_bad_value_cases():
    variables = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    assert variables == set(BAD_VALUES), variables ^ set(BAD_VALUES)


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v[:20]!r}" for n, v in CASES])
def test_bad_value_raises_config_error_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert name in str(raised.value)


def test_defaults():
    settings = Settings.from_env({})
    assert settings.site == "OSL"
    assert (
        settings.execution_timeout_seconds,
        settings.enqueued_timeout_seconds,
        settings.abort_grace_seconds,
        settings.sweep_interval_seconds,
    ) == (3600, 86400, 300, 60)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.redis_url.startswith("redis://")
    assert settings.fallback_worker == "static-analyzer"
    assert (settings.outbox_max_attempts, settings.kafka_max_request_bytes, settings.ingest_max_deliveries) == (
        50,
        1048576,
        5,
    )
    assert (settings.policy_cache_seconds, settings.duplicate_window_seconds) == (300, 0)
    assert (settings.outbox_retention_hours, settings.job_retention_days, settings.purge_interval_seconds) == (
        24,
        0,
        300,
    )
    assert (settings.metrics_enabled, settings.worker_metrics_port, settings.status_outbox_max_age_seconds) == (
        True,
        9808,
        60,
    )
    assert Settings.from_env({"SAMPLEDB_METRICS_ENABLED": " False "}).metrics_enabled is False
    assert (settings.job_topic, settings.abort_topic, settings.event_topic) == (
        "Sample.Analysis.Job.OSL",
        "Sample.Analysis.Job.Abort.OSL",
        "Sample.Analysis.Job.Event.OSL",
    )


def test_good_values_are_parsed():
    settings = Settings.from_env(
        {
            "SAMPLEDB_DATABASE_URL": "postgres://u:p@db:5433/jobs",
            "SAMPLEDB_REDIS_URL": "rediss://cache:6380/1",
            "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS": " k1:9092, k2:9093 ",
            "SAMPLEDB_SITE": "SVG",
            "SAMPLEDB_EXECUTION_TIMEOUT_SECONDS": " 120 ",
            "SAMPLEDB_ENQUEUED_TIMEOUT_SECONDS": "0",
            "SAMPLEDB_ABORT_GRACE_SECONDS": "30",
            "SAMPLEDB_FALLBACK_WORKER": "cuckoo:2.0",
            "SAMPLEDB_API_PORT": "65535",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u:p@db:5433/jobs"
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert settings.site == "SVG" and settings.event_topic == "Sample.Analysis.Job.Event.SVG"
    assert settings.execution_timeout_seconds == 120
    assert settings.enqueued_timeout_seconds == 0  # 0 = never
    assert (settings.abort_grace_seconds, settings.fallback_worker, settings.api_port) == (30, "cuckoo:2.0", 65535)


def test_start_up_stops_on_a_bad_value(monkeypatch):
    monkeypatch.setenv("SAMPLEDB_EXECUTION_TIMEOUT_SECONDS", "an hour")
    with pytest.raises(ConfigError, match="SAMPLEDB_EXECUTION_TIMEOUT_SECONDS"):
        create_app()


def test_unset_urls_come_from_a_dev_stacks_env_file(monkeypatch, tmp_path):
    (tmp_path / ".sampledb").mkdir()
    (tmp_path / ".sampledb" / "dev.env").write_text(
        "SAMPLEDB_DATABASE_URL=postgresql://dev@127.0.0.1:15432/sampledb\n"
        "SAMPLEDB_REDIS_URL='redis://127.0.0.1:16379/0'\n"
        "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092\n"
        "OTHER=ignored\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in BAD_VALUES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS", "broker:9092")  # the environment wins
    settings = Settings.from_env()
    assert settings.database_url == "postgresql+psycopg://dev@127.0.0.1:15432/sampledb"
    assert settings.redis_url == "redis://127.0.0.1:16379/0"
    assert settings.kafka_bootstrap_servers == "broker:9092"


KAFKA_MISMATCHES = [
    ({"SAMPLEDB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SAMPLEDB_KAFKA_SASL_MECHANISM"),
    (
        {"SAMPLEDB_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SAMPLEDB_KAFKA_SASL_MECHANISM": "PLAIN"},
        "SAMPLEDB_KAFKA_SASL_USERNAME",
    ),
    (
        {
            "SAMPLEDB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SAMPLEDB_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SAMPLEDB_KAFKA_SASL_USERNAME": "sampledb",
        },
        "SAMPLEDB_KAFKA_SASL_PASSWORD",
    ),
    ({"SAMPLEDB_KAFKA_SSL_CAFILE": __file__}, "SAMPLEDB_KAFKA_SECURITY_PROTOCOL"),
]


@pytest.mark.parametrize("environment, named", KAFKA_MISMATCHES, ids=[n for _, n in KAFKA_MISMATCHES])
def test_kafka_security_settings_that_do_not_fit_together_stop_start_up_naming_the_variable(environment, named):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(environment)
    assert named in str(raised.value)


def test_kafka_security_settings_reach_kafka_python_as_its_own_arguments():
    plain = Settings.from_env({})
    assert plain.kafka_client_options == {"security_protocol": "PLAINTEXT"}
    secured = Settings.from_env(
        {
            "SAMPLEDB_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "SAMPLEDB_KAFKA_SASL_MECHANISM": "scram-sha-256",
            "SAMPLEDB_KAFKA_SASL_USERNAME": "sampledb",
            "SAMPLEDB_KAFKA_SASL_PASSWORD": " pass word ",  # kept as given: a password may have spaces
            "SAMPLEDB_KAFKA_SSL_CAFILE": __file__,
        }
    )
    assert secured.kafka_client_options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "sampledb",
        "sasl_plain_password": " pass word ",
        "ssl_cafile": __file__,
    }
    # Every one is an argument kafka-python's clients take.
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(secured.kafka_client_options) <= set(client.DEFAULT_CONFIG), client


def test_the_celery_broker_is_the_redis_unless_a_broker_url_is_given():
    assert Settings.from_env({"SAMPLEDB_REDIS_URL": "redis://r:6379/2"}).celery_broker == "redis://r:6379/2"
    rabbit = Settings.from_env({"SAMPLEDB_CELERY_BROKER_URL": "amqp://guest:guest@mq:5672/sampledb"})
    assert rabbit.celery_broker == "amqp://guest:guest@mq:5672/sampledb" and rabbit.broker_is_amqp
