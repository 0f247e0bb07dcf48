"""`sampledb-jobs dev`: the whole service on one machine, from Python packages alone.

Starts embedded PostgreSQL, Redis and a Kafka-protocol broker (unless SAMPLEDB_* URLs
point at real ones), applies the migrations, then runs the API (gunicorn), a Celery
worker, beat and Flower as child processes until Ctrl-C or SIGTERM. State lives under
`./.sampledb/`; the URLs in use are written to `./.sampledb/dev.env` so that other
`sampledb-jobs` commands run in this directory talk to this stack.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from app.config import DEV_ENV_FILE, Settings
from app.dev import commands
from app.dev.processes import Child, ChildError

STATE_DIR = DEV_ENV_FILE.parent
LOG_DIR = STATE_DIR / "logs"
KEY_FILE = STATE_DIR / "dev.key"
FLOWER_AUTH_FILE = STATE_DIR / "flower.auth"
LOCK_FILE = STATE_DIR / "dev.lock"
# The API's gunicorn workers sum their metrics through this directory (emptied by its config at start).
WEB_METRICS_DIR = STATE_DIR / "web-metrics"
READY_TIMEOUT = 120


class DevStackError(click.ClickException):
    pass


@dataclass
class DevStack:
    settings_env: dict[str, str]
    api_port: int
    flower_port: int
    servers: list = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    # -- start ---------------------------------------------------------------------------------

    def start_servers(self) -> dict[str, str]:
        """Embedded servers for every URL not given; returns the SAMPLEDB_* URLs in use."""
        from app.dev.kafka import start_kafka
        from app.dev.postgres import start_postgres
        from app.dev.redis import start_redis

        embedded = [
            ("SAMPLEDB_DATABASE_URL", "PostgreSQL", lambda: start_postgres(STATE_DIR.resolve() / "postgres")),
            ("SAMPLEDB_REDIS_URL", "Redis", lambda: start_redis(STATE_DIR.resolve() / "redis")),
            (
                "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS",
                "Kafka-protocol broker (Tansu, in memory)",
                lambda: start_kafka(log_dir=LOG_DIR.resolve()),
            ),
        ]
        urls = {}
        for variable, name, start in embedded:
            if variable in self.settings_env:
                urls[variable] = self.settings_env[variable]
                continue
            click.echo(f"starting embedded {name} ...")
            server = start()
            self.servers.append(server)
            urls[variable] = server.url
        return urls

    def start_children(self, env: dict[str, str], flower_auth: str) -> None:
        def service(name: str) -> Child:
            # Should `dev` die without stopping it (SIGKILL), the kernel kills it too; its own processes
            # follow (the Celery pool has a death signal of its own, gunicorn workers watch their parent).
            return Child(name, LOG_DIR / f"{name}.log", death_signal=signal.SIGKILL)

        planned = [
            (
                service("api"),
                commands.gunicorn("app.factory:create_app()", f"127.0.0.1:{self.api_port}", "--access-logfile", "-"),
            ),
            (
                service("worker"),
                commands.celery_worker("--task-events", "--loglevel", "INFO", "--hostname", "sampledb-dev@%h"),
            ),
            (
                service("beat"),
                commands.celery(
                    "beat", "--loglevel", "INFO", "--schedule", str((STATE_DIR / "celerybeat-schedule").resolve())
                ),
            ),
            (
                service("flower"),
                commands.flower(f"--port={self.flower_port}", "--address=127.0.0.1", f"--basic-auth={flower_auth}"),
            ),
        ]
        for child, argv in planned:
            own = {"PROMETHEUS_MULTIPROC_DIR": str(WEB_METRICS_DIR.resolve())} if child.name == "api" else {}
            self.children.append(child.start(argv, env={**env, **own}))

    # -- run -----------------------------------------------------------------------------------

    def watch(self) -> int:
        """Until a signal or a dead child: a child that dies is reported with its last log lines."""
        while not self.stopping:
            for child in self.children:
                code = child.exited()
                if code is not None:
                    click.secho(
                        f"\n{child.name} exited with code {code}; its last log lines ({child.log_path}):",
                        fg="red",
                        err=True,
                    )
                    click.echo(child.tail(), err=True)
                    return 1
            for server in self.servers:
                if not server.alive():
                    click.secho(f"\nembedded {server.name} stopped; its log is {server.log_path}", fg="red", err=True)
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            child.signal(signal.SIGTERM)  # all at once: each stops while the others do
        for child in self.children:
            child.stop()
        for server in reversed(self.servers):
            server.stop()


def _wait_ready(url: str, child: Child, timeout: float = READY_TIMEOUT) -> None:
    try:
        child.wait_until(lambda left: commands.answers(url), timeout, f"answering {url}")
    except ChildError as err:
        raise DevStackError(str(err)) from None


def _remembered_secret(path: Path, make) -> str:
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    secret = make()
    _keep_secret(path, secret)
    return secret


def _keep_secret(path: Path, secret: str) -> None:
    """Write a secret of the stack readable by its owner only."""
    path.write_text(secret + "\n")
    path.chmod(0o600)


def _analyzer_key(settings: Settings) -> str:
    """The stack's all-customers analyzer key: made once, kept in .sampledb/dev.key, re-made if revoked."""
    import sqlalchemy as sa

    from app.accounts.keys import create_key, hash_key
    from app.extensions import db
    from app.factory import create_app
    from app.models import ApiKey

    app = create_app(settings)
    with app.app_context():
        if KEY_FILE.is_file():
            key = KEY_FILE.read_text().strip()
            if db.session.scalar(
                sa.select(ApiKey.id).where(ApiKey.key_hash == hash_key(key), ApiKey.disabled.is_(False))
            ):
                return key
        key = create_key(
            db.session, user="dev-analyzer", customer="sampledb-dev", role="SAMPLEDB-ANALYZER", all_customers=True
        )
        db.session.commit()
    db.dispose()
    _keep_secret(KEY_FILE, key)
    return key


def _take_lock():
    STATE_DIR.mkdir(exist_ok=True)
    lock = open(LOCK_FILE, "a+")  # noqa: SIM115 -- held open for the stack's whole life: the lock is the open file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        raise DevStackError(
            f"sampledb-jobs dev is already running in this directory (pid {pid}); "
            f"its URLs are in {DEV_ENV_FILE}. Stop it with Ctrl-C first."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def run() -> int:
    lock = _take_lock()
    # Only the real environment counts here: an old dev.env must not point this start at dead servers.
    given = {k: v for k, v in os.environ.items() if k.startswith("SAMPLEDB_")}
    try:
        base = Settings.from_env(given)
    except ValueError as err:
        raise DevStackError(str(err)) from None
    stack = DevStack(given, api_port=base.api_port, flower_port=base.flower_port)

    def on_signal(signum, frame):
        stack.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        urls = stack.start_servers()
        env = {**os.environ, **given, **urls, "PYTHONUNBUFFERED": "1"}
        settings = Settings.from_env(env)
        click.echo("applying migrations ...")
        from app.operations.migrate import upgrade

        upgrade(settings.database_url)
        key = _analyzer_key(settings)
        flower_auth = _remembered_secret(FLOWER_AUTH_FILE, lambda: f"admin:{secrets.token_urlsafe(12)}")
        api_url = f"http://127.0.0.1:{stack.api_port}"
        flower_url = f"http://127.0.0.1:{stack.flower_port}"
        DEV_ENV_FILE.write_text(
            "".join(
                f"{k}={v}\n"
                for k, v in {
                    **urls,
                    "SAMPLEDB_API_URL": api_url,
                    "SAMPLEDB_FLOWER_URL": flower_url,
                    "SAMPLEDB_FLOWER_BASIC_AUTH": flower_auth,
                }.items()
            )
        )
        stack.start_children(env, flower_auth)
        _wait_ready(f"{api_url}/sampledb/v2/readyz", stack.children[0])
        click.echo(
            f"\nsampledb-jobs is running\n"
            f"  API      {api_url}/sampledb/v2   (docs: {api_url}/sampledb/v2/docs)\n"
            f"  Flower   {flower_url}   (login {flower_auth})\n"
            f"  metrics  {api_url}/metrics   (web)   "
            f"http://127.0.0.1:{settings.worker_metrics_port}/metrics   (worker)\n"
            f"  site     {settings.site}   "
            f"topics {settings.job_topic}, {settings.abort_topic}, {settings.event_topic}\n"
            f"  logs     {LOG_DIR}/\n"
            f"  settings {DEV_ENV_FILE}\n"
            f"All-customers SAMPLEDB-ANALYZER key:\n{key}\n"
            f"Press Ctrl-C to stop.",
        )
        return stack.watch()
    finally:
        click.echo("stopping ...", err=True)
        stack.stop()
        DEV_ENV_FILE.unlink(missing_ok=True)
        lock.close()
        click.echo("stopped", err=True)
