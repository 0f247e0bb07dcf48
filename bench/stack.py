"""The servers a benchmark run uses and the databases it makes on them.

Embedded servers (app.dev) in a temp dir unless the SAMPLEDB_* URLs are set. On
given servers the run works only in what it creates: databases named
`sampledb_bench_<run>_*` (dropped at the end), an empty Redis database (flushed at the
end only because it was empty at the start) and topics of a site of its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from app.config import Settings
from app.extensions import db
from app.factory import create_app
from app.operations.migrate import upgrade

log = logging.getLogger(__name__)


@dataclass
class Servers:
    postgres_url: str  # any database of the server: only used to create and drop ours
    redis_url: str | None
    kafka_bootstrap: str | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _embedded_servers: list = field(default_factory=list, repr=False)
    _temp_dir: Path | None = field(default=None, repr=False)
    _redis_was_empty: bool = field(default=False, repr=False)

    @property
    def site(self) -> str:
        """A site of the run's own: its Kafka topics are `Sample.Analysis.Job.BENCH<run>`."""
        return f"BENCH{self.run_id}"

    def pids(self) -> dict[str, int]:
        """The embedded servers' process ids by name (none for given servers)."""
        return {server.name: server.pid for server in self._embedded_servers if server.pid}

    def stop(self) -> None:
        if self.redis_url and self._redis_was_empty:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            client.flushdb()
            client.close()
        for server in reversed(self._embedded_servers):
            server.stop()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def start_servers(need_workers: bool = True) -> Servers:
    """Embedded servers for every SAMPLEDB_* URL that is not set (Redis and Kafka only if `need_workers`)."""
    from app.dev.kafka import start_kafka
    from app.dev.postgres import start_postgres
    from app.dev.redis import start_redis

    given_pg = os.environ.get("SAMPLEDB_DATABASE_URL")
    given_redis = os.environ.get("SAMPLEDB_REDIS_URL")
    given_kafka = os.environ.get("SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS")
    temp_dir = Path(tempfile.mkdtemp(prefix="sampledb-bench-"))
    started = []
    try:
        if given_pg:
            pg_url = Settings.from_env({"SAMPLEDB_DATABASE_URL": given_pg}).database_url
        else:
            # Commit timestamps: B3 and B7 split their latency at each job's actual commit.
            server = start_postgres(temp_dir / "postgres", server_settings={"track_commit_timestamp": "on"})
            started.append(server)
            pg_url = server.url
        redis_url = kafka = None
        redis_was_empty = False
        if need_workers:
            if given_redis:
                redis_url = empty_redis_database(given_redis)
                redis_was_empty = True
            else:
                server = start_redis(temp_dir / "redis")
                started.append(server)
                redis_url = server.url
            if given_kafka:
                kafka = given_kafka
            else:
                server = start_kafka(log_dir=temp_dir / "kafka")
                started.append(server)
                kafka = server.url
    except BaseException:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return Servers(
        pg_url, redis_url, kafka, _embedded_servers=started, _temp_dir=temp_dir, _redis_was_empty=redis_was_empty
    )


def empty_redis_database(url: str) -> str:
    """The same Redis server with the highest-numbered database that holds no keys (ours for the run)."""
    import redis

    base = redis.Redis.from_url(url)
    try:
        databases = int(base.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG may be disabled on a managed server
        databases = 16
    finally:
        base.close()
    for number in range(databases - 1, 0, -1):
        client = redis.Redis.from_url(url, db=number)
        try:
            if client.dbsize() == 0:
                return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))
        finally:
            client.close()
    raise RuntimeError(f"no empty database on the Redis server of {url}: the benchmark would mix with existing data")


@dataclass
class Database:
    """A database of the run's own, migrated to head; `url` is a SQLAlchemy URL with the password."""

    name: str
    url: str


class Databases:
    """Creates migrated databases on the server (a template is migrated once and copied) and drops them all."""

    def __init__(self, servers_url: str, run_id: str):
        self.server = sa.make_url(servers_url)
        self.run_id = run_id
        self.admin = sa.create_engine(self.server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.created: list[str] = []
        self._template: str | None = None

    def _url(self, name: str) -> str:
        return self.server.set(database=name).render_as_string(hide_password=False)

    def create(self, suffix: str) -> Database:
        if self._template is None:
            self._template = self._create_empty("template")
            upgrade(self._url(self._template))
        name = f"sampledb_bench_{self.run_id}_{suffix}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"'))
        self.created.append(name)
        return Database(name, self._url(name))

    def _create_empty(self, suffix: str) -> str:
        name = f"sampledb_bench_{self.run_id}_{suffix}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            try:
                self.drop(name)
            except Exception:  # best effort at the end; the name says whose it is
                log.warning("could not drop database %s", name, exc_info=True)
        self.admin.dispose()


def bench_settings(database_url: str, servers: Servers | None = None, **overrides: str) -> Settings:
    # Without Redis or Kafka (a run without B3) they point nowhere rather than at some local default server.
    environ = {
        "SAMPLEDB_DATABASE_URL": database_url,
        "SAMPLEDB_SITE": servers.site if servers else "BENCH",
        "SAMPLEDB_REDIS_URL": (servers and servers.redis_url) or "redis://127.0.0.1:1/0",
        "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS": (servers and servers.kafka_bootstrap) or "127.0.0.1:1",
    }
    environ.update(overrides)
    return Settings.from_env(environ)


def settings_env(settings: Settings) -> dict[str, str]:
    """The SAMPLEDB_* environment that makes a child process (gunicorn, celery) use `settings`."""
    from dataclasses import fields

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    for f in fields(settings):
        env[f.metadata["env"]] = str(getattr(settings, f.name))
    return env


@contextmanager
def app_bound_to(settings: Settings):
    """A Flask app on `settings` in this process, with an engine of its own, closed afterwards."""
    app = create_app(settings)
    try:
        yield app
    finally:
        db.engine_of(app).dispose()
