"""Every setting of the service: read from the environment, parsed and checked once.

A bad value stops start-up with a ConfigError that names the variable. Run in the
directory of a `sampledb-jobs dev` stack, unset URLs come from its `.sampledb/dev.env`
so every command talks to that stack.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

DEV_ENV_FILE = Path(".sampledb") / "dev.env"

SITE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
WORKER_SHORT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_:.-]+$")


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} must not be empty")
    return raw.strip()


# Whole-number settings end up in SQL (timeouts become bigint millisecond cutoffs, batch sizes a LIMIT).
WHOLE_MAX = 2**31 - 1


def _whole(name: str, raw: str, *, unit: str = "", allow_zero: bool = False) -> int:
    # ASCII digits only: int() would also take "1_000" or Arabic-Indic digits.
    if not re.fullmatch(r"[+-]?[0-9]+", raw.strip(), re.ASCII):
        raise ConfigError(f"{name} must be a whole number{unit}, got {raw!r}")
    value = int(raw) if len(raw.strip()) <= 20 else WHOLE_MAX + 1  # int() refuses thousands of digits
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'0 or more' if allow_zero else 'more than 0'}{unit}, got {value}")
    if value > WHOLE_MAX:
        raise ConfigError(f"{name} must be at most {WHOLE_MAX}{unit}, got {raw.strip()[:40]}")
    return value


def _seconds(name: str, raw: str) -> int:
    return _whole(name, raw, unit=" of seconds")


def _milliseconds(name: str, raw: str) -> int:
    return _whole(name, raw, unit=" of milliseconds")


def _count(name: str, raw: str) -> int:
    return _whole(name, raw)


def _port(name: str, raw: str) -> int:
    value = _whole(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), got {value}")
    return value


def _database_url(name: str, raw: str) -> str:
    url = _text(name, raw)
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://") :]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not url.startswith("postgresql+psycopg://"):
        raise ConfigError(f"{name} must be a postgresql:// URL, got {raw!r}")
    return url


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def _redis_url(name: str, raw: str) -> str:
    url = _text(name, raw)
    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError(f"{name} must be a redis://, rediss://, unix:// or sentinel:// URL, got {raw!r}")
    return url


def _broker_url(name: str, raw: str) -> str:
    """Celery's broker: RabbitMQ (amqp://, amqps://) or Redis; empty means the Redis of SAMPLEDB_REDIS_URL."""
    if not raw.strip():
        return ""
    url = raw.strip()
    if not url.startswith(AMQP_SCHEMES + REDIS_SCHEMES):
        raise ConfigError(f"{name} must be an amqp://, amqps:// or redis:// URL, got {raw!r}")
    return url


def _bootstrap(name: str, raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]

    def valid(server: str) -> bool:
        return bool(re.fullmatch(r"[^\s:]+:[0-9]{1,5}", server, re.ASCII)) and 0 < int(server.rsplit(":", 1)[1]) < 65536

    if not servers or not all(valid(s) for s in servers):
        raise ConfigError(f"{name} must be a comma-separated list of host:port, got {raw!r}")
    return ",".join(servers)


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _one_of(choices: tuple[str, ...], *, optional: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper()
        if optional and not value:
            return ""
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _optional_text(name: str, raw: str) -> str:
    return raw


def _optional_file(name: str, raw: str) -> str:
    path = raw.strip()
    if path and not os.access(path, os.R_OK):
        raise ConfigError(f"{name} must name a readable file, got {raw!r}")
    if path and not Path(path).is_file():
        raise ConfigError(f"{name} must name a file, got {raw!r}")
    return path


def _switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _site(name: str, raw: str) -> str:
    site = _text(name, raw)
    if not SITE_PATTERN.fullmatch(site):
        raise ConfigError(f"{name} must be letters, digits, '_' or '-' (it goes into Kafka topic names), got {raw!r}")
    return site


def _worker_name(name: str, raw: str) -> str:
    value = _text(name, raw)
    if not WORKER_SHORT_NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{name} must match [a-zA-Z0-9_:.-]+, got {raw!r}")
    return value


def _setting(env: str, default: str, parse: Callable[[str, str], object]):
    return field(default=None, metadata={"env": env, "default": default, "parse": parse})


@dataclass(frozen=True)
class Settings:
    database_url: str = _setting(
        "SAMPLEDB_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/sampledb", _database_url
    )
    redis_url: str = _setting("SAMPLEDB_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url)
    # Celery's broker when it is not that Redis (RabbitMQ); Redis still keeps the service's flags and counters.
    celery_broker_url: str = _setting("SAMPLEDB_CELERY_BROKER_URL", "", _broker_url)
    # The master's name a sentinel:// Redis URL asks the sentinels for.
    redis_sentinel_master: str = _setting("SAMPLEDB_REDIS_SENTINEL_MASTER", "mymaster", _text)
    kafka_bootstrap_servers: str = _setting("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", _bootstrap)
    # TLS and SASL toward Kafka (SPEC 13.2), for the relay, the readiness check and the analyzer alike.
    kafka_security_protocol: str = _setting(
        "SAMPLEDB_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _one_of(KAFKA_SECURITY_PROTOCOLS)
    )
    kafka_sasl_mechanism: str = _setting(
        "SAMPLEDB_KAFKA_SASL_MECHANISM", "", _one_of(KAFKA_SASL_MECHANISMS, optional=True)
    )
    kafka_sasl_username: str = _setting("SAMPLEDB_KAFKA_SASL_USERNAME", "", _optional_text)
    kafka_sasl_password: str = _setting("SAMPLEDB_KAFKA_SASL_PASSWORD", "", _optional_text)
    # The CA that signed the brokers' certificates (empty: the system's trust store).
    kafka_ssl_cafile: str = _setting("SAMPLEDB_KAFKA_SSL_CAFILE", "", _optional_file)
    site: str = _setting("SAMPLEDB_SITE", "OSL", _site)
    execution_timeout_seconds: int = _setting("SAMPLEDB_EXECUTION_TIMEOUT_SECONDS", "3600", _seconds)
    enqueued_timeout_seconds: int = _setting(
        "SAMPLEDB_ENQUEUED_TIMEOUT_SECONDS", "86400", lambda n, r: _whole(n, r, unit=" of seconds", allow_zero=True)
    )
    abort_grace_seconds: int = _setting("SAMPLEDB_ABORT_GRACE_SECONDS", "300", _seconds)
    sweep_interval_seconds: int = _setting("SAMPLEDB_SWEEP_INTERVAL_SECONDS", "60", _seconds)
    outbox_relay_interval_seconds: int = _setting("SAMPLEDB_OUTBOX_RELAY_INTERVAL_SECONDS", "5", _seconds)
    # However many beat processes run, the one holding this lease schedules (SPEC 13.1); another takes over
    # within the lease and a second after its holder dies: keep it below twice the shortest interval above.
    scheduler_lease_seconds: int = _setting("SAMPLEDB_SCHEDULER_LEASE_SECONDS", "8", _seconds)
    sweep_batch_size: int = _setting("SAMPLEDB_SWEEP_BATCH_SIZE", "500", _count)
    # A task a dead worker took goes back to its queue after this long; above the longest task and retry countdown.
    api_key_cache_seconds: int = _setting(
        "SAMPLEDB_API_KEY_CACHE_SECONDS", "10", lambda n, r: _whole(n, r, unit=" of seconds", allow_zero=True)
    )
    # Policy, rules and the worker registry are read once per this many seconds per process (0 = every job).
    policy_cache_seconds: int = _setting(
        "SAMPLEDB_POLICY_CACHE_SECONDS", "300", lambda n, r: _whole(n, r, unit=" of seconds", allow_zero=True)
    )
    # A customer's submission of a sample it had a job for this recently makes no new job (0 = off).
    duplicate_window_seconds: int = _setting(
        "SAMPLEDB_DUPLICATE_WINDOW_SECONDS", "0", lambda n, r: _whole(n, r, unit=" of seconds", allow_zero=True)
    )
    celery_visibility_timeout_seconds: int = _setting("SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS", "300", _seconds)
    # Retention (§9.1): sent outbox rows and final jobs older than these are purged by beat.
    outbox_retention_hours: int = _setting(
        "SAMPLEDB_OUTBOX_RETENTION_HOURS", "24", lambda n, r: _whole(n, r, unit=" of hours")
    )
    job_retention_days: int = _setting(
        "SAMPLEDB_JOB_RETENTION_DAYS", "0", lambda n, r: _whole(n, r, unit=" of days", allow_zero=True)
    )
    purge_interval_seconds: int = _setting("SAMPLEDB_PURGE_INTERVAL_SECONDS", "300", _seconds)
    purge_batch_size: int = _setting("SAMPLEDB_PURGE_BATCH_SIZE", "1000", _count)
    # Metrics (§9.2): the web app's /metrics and the Celery worker's own port.
    metrics_enabled: bool = _setting("SAMPLEDB_METRICS_ENABLED", "true", _switch)
    metrics_cache_seconds: int = _setting(
        "SAMPLEDB_METRICS_CACHE_SECONDS", "5", lambda n, r: _whole(n, r, unit=" of seconds", allow_zero=True)
    )
    worker_metrics_port: int = _setting("SAMPLEDB_WORKER_METRICS_PORT", "9808", _port)
    status_outbox_max_age_seconds: int = _setting("SAMPLEDB_STATUS_OUTBOX_MAX_AGE_SECONDS", "60", _seconds)
    status_queue_max_length: int = _setting("SAMPLEDB_STATUS_QUEUE_MAX_LENGTH", "10000", _count)
    # Every API request runs under these (a stalled database answers 503 instead of holding the request).
    api_statement_timeout_ms: int = _setting("SAMPLEDB_API_STATEMENT_TIMEOUT_MS", "5000", _milliseconds)
    api_lock_timeout_ms: int = _setting("SAMPLEDB_API_LOCK_TIMEOUT_MS", "2000", _milliseconds)
    # Celery tasks work in larger batches: longer limits, still below the task's soft time limit.
    worker_statement_timeout_ms: int = _setting("SAMPLEDB_WORKER_STATEMENT_TIMEOUT_MS", "30000", _milliseconds)
    worker_lock_timeout_ms: int = _setting("SAMPLEDB_WORKER_LOCK_TIMEOUT_MS", "10000", _milliseconds)
    database_connect_timeout_seconds: int = _setting("SAMPLEDB_DATABASE_CONNECT_TIMEOUT_SECONDS", "5", _seconds)
    # What stands between the service and PostgreSQL: `none`, or `transaction` for PgBouncer in transaction
    # mode (no server-side prepared statements, timeouts set per transaction; docs/DEPLOYMENT.md).
    database_pooler: str = _setting("SAMPLEDB_DATABASE_POOLER", "none", _one_of(("NONE", "TRANSACTION")))
    # A task past its soft limit (a hung database) is retried; past its hard limit its process is killed
    # and its message re-queued. The hard limit must exceed the soft one.
    task_soft_time_limit_seconds: int = _setting("SAMPLEDB_TASK_SOFT_TIME_LIMIT_SECONDS", "60", _seconds)
    task_time_limit_seconds: int = _setting("SAMPLEDB_TASK_TIME_LIMIT_SECONDS", "90", _seconds)
    # Beat's safety net for REST submissions committed but not yet made into jobs.
    pending_ingest_interval_seconds: int = _setting("SAMPLEDB_PENDING_INGEST_INTERVAL_SECONDS", "5", _seconds)
    # A worker that claimed pending REST submissions has them this long; past it (its host died or was cut
    # off mid-batch) another takes them. Well above a batch's ingest, below the task's soft time limit.
    pending_claim_seconds: int = _setting("SAMPLEDB_PENDING_CLAIM_SECONDS", "30", _seconds)
    # A row that failed this often while the broker took other rows is parked (SPEC 10.1).
    outbox_max_attempts: int = _setting("SAMPLEDB_OUTBOX_MAX_ATTEMPTS", "50", _count)
    # The producer refuses larger messages (kafka-python's max_request_size); they are parked.
    kafka_max_request_bytes: int = _setting("SAMPLEDB_KAFKA_MAX_REQUEST_BYTES", "1048576", _count)
    # An ingest task delivered more often than this (it keeps killing its worker) is stored dead (SPEC 10.2).
    ingest_max_deliveries: int = _setting("SAMPLEDB_INGEST_MAX_DELIVERIES", "5", _count)
    fallback_worker: str = _setting("SAMPLEDB_FALLBACK_WORKER", "static-analyzer", _worker_name)
    api_port: int = _setting("SAMPLEDB_API_PORT", "8000", _port)
    flower_port: int = _setting("SAMPLEDB_FLOWER_PORT", "5555", _port)

    def __post_init__(self) -> None:
        _check_kafka_security(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every setting; unset URLs fall back to a local dev stack's dev.env, then to defaults."""
        env = dict(os.environ if environ is None else environ)
        if environ is None:
            for key, value in read_dev_env().items():
                env.setdefault(key, value)
        values = {}
        for f in fields(cls):
            meta = f.metadata
            values[f.name] = meta["parse"](meta["env"], env.get(meta["env"], meta["default"]))
        return cls(**values)

    @property
    def kafka_client_options(self) -> dict[str, str]:
        """kafka-python's security arguments of every Kafka client the service and its analyzers make."""
        options = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        if self.kafka_ssl_cafile:
            options["ssl_cafile"] = self.kafka_ssl_cafile
        return options

    @property
    def through_transaction_pooler(self) -> bool:
        return self.database_pooler == "TRANSACTION"

    @property
    def celery_broker(self) -> str:
        """The URL Celery's tasks go through: SAMPLEDB_CELERY_BROKER_URL, else the Redis."""
        return self.celery_broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.celery_broker.startswith(AMQP_SCHEMES)

    @property
    def job_topic(self) -> str:
        return f"Sample.Analysis.Job.{self.site}"

    @property
    def abort_topic(self) -> str:
        return f"Sample.Analysis.Job.Abort.{self.site}"

    @property
    def event_topic(self) -> str:
        return f"Sample.Analysis.Job.Event.{self.site}"


def _check_kafka_security(settings: Settings) -> None:
    """The Kafka settings that only make sense together (the variables they come from are named)."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    if protocol is None:  # a Settings built field by field in a test, before from_env's values
        return
    sasl = protocol.startswith("SASL_")
    if sasl and not mechanism:
        raise ConfigError(f"SAMPLEDB_KAFKA_SECURITY_PROTOCOL={protocol} needs SAMPLEDB_KAFKA_SASL_MECHANISM")
    if mechanism and not sasl:
        raise ConfigError(
            f"SAMPLEDB_KAFKA_SASL_MECHANISM={mechanism} needs SAMPLEDB_KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or "
            f"SASL_SSL, got {protocol}"
        )
    for name, value in (
        ("SAMPLEDB_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
        ("SAMPLEDB_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
    ):
        if mechanism and not value:
            raise ConfigError(f"{name} must be set with SAMPLEDB_KAFKA_SASL_MECHANISM={mechanism}")
        if value and not mechanism:
            raise ConfigError(f"{name} is set but SAMPLEDB_KAFKA_SASL_MECHANISM is not")
    if settings.kafka_ssl_cafile and protocol not in ("SSL", "SASL_SSL"):
        raise ConfigError(
            f"SAMPLEDB_KAFKA_SSL_CAFILE needs SAMPLEDB_KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, got {protocol}"
        )


def read_dev_env(path: Path = DEV_ENV_FILE) -> dict[str, str]:
    """The shell assignments a running `sampledb-jobs dev` wrote, or nothing."""
    if not path.is_file():
        return {}
    assignments = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("SAMPLEDB_"):
            assignments[key] = value.strip().strip("'\"")
    return assignments
