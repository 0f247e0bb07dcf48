"""The `sampledb-jobs` command."""

from __future__ import annotations

import datetime
import json
import signal
import sys
import threading

import click
import sqlalchemy.orm as so

from analyzer.command import Connection, analyzer_group
from app.accounts.keys import create_key
from app.config import ConfigError, Settings
from app.extensions import database_engine, timeouts_ms
from app.extensions import db as database
from app.factory import create_app
from app.intake import dead_submissions
from app.operations import retention
from app.operations import status as health
from app.operations.migrate import upgrade
from app.outbox import store as outbox_rows
from app.unit_of_work import unit_of_work


class _Command(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as err:  # a bad setting is the user's to fix: its message, not a stack trace
            raise click.ClickException(str(err)) from None


@click.group(cls=_Command)
def main() -> None:
    """SampleDB jobs: the analysis-job service of a malware sample database."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations."""
    settings = Settings.from_env()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--user", "user", required=True, help="shortName of the key's user (created when new)")
@click.option("--customer", required=True, help="shortName of the user's customer (created when new)")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["SAMPLEDB-VIEWER", "SAMPLEDB-UPLOADER", "SAMPLEDB-USER", "SAMPLEDB-ANALYZER"]),
)
@click.option("--grant-customer", "grant_customers", multiple=True, help="another customer the key may see")
@click.option("--all-customers", is_flag=True, help="the key sees every customer (the analysis system)")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, help="seconds until the key expires")
def keys_create(
    user: str, customer: str, role: str, grant_customers: tuple[str, ...], all_customers: bool, expires_in: int | None
) -> None:
    """Make an API key; it is printed alone on the last line and never shown again."""
    app = create_app(Settings.from_env())
    with app.app_context(), unit_of_work(database.session) as session:
        secret = create_key(
            session,
            user=user,
            customer=customer,
            role=role,
            grant_customers=grant_customers,
            all_customers=all_customers,
            expires_in=expires_in,
        )
    click.echo(f"API key for {user} ({role}" + (", all customers" if all_customers else "") + "):")
    click.echo(secret)


def _app_session():
    """The app of the environment's settings, and the session handle."""
    return create_app(Settings.from_env()), database


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_or_all(what: str):
    """The arguments of a retry command: one ID, or --all."""

    def decorate(command):
        command = click.option("--all", "every", is_flag=True, help=f"every {what}")(command)
        return click.argument("row_id", metavar="[ID]", type=int, required=False)(command)

    return decorate


def _selection(row_id: int | None, every: bool) -> list[int] | None:
    """[ID] or --all (None): exactly one of them."""
    if (row_id is None) == (not every):
        raise click.UsageError("name one ID or pass --all")
    return None if row_id is None else [row_id]  # after the check above: None exactly with --all


def _print_rows(read, title: str, describe) -> None:
    """Print a count line, then one line per row `read(session)` returns."""
    app, database = _app_session()
    with app.app_context():
        rows = read(database.session)
    click.echo(f"{len(rows)} {title}")
    for row in rows:
        click.echo(describe(row))


@main.group()
def outbox() -> None:
    """Kafka messages the relay parked (the broker will not take them as they are)."""


@outbox.command("parked")
def outbox_parked() -> None:
    """List the parked messages: they and the later messages of their job wait."""
    _print_rows(
        outbox_rows.parked_messages,
        "parked outbox messages",
        lambda row: (
            f"id={row.id} key={row.key} topic={row.topic} attempts={row.attempts} "
            f"created={_when(row.created_timestamp)} "
            f"parked={_when(row.parked_timestamp)} error={row.last_error}"
        ),
    )


@outbox.command("retry")
@_one_or_all("parked message")
def outbox_retry(row_id: int | None, every: bool) -> None:
    """Put parked messages back in line, with fresh attempts."""
    ids = _selection(row_id, every)
    app, database = _app_session()
    with app.app_context(), unit_of_work(database.session) as session:
        released = outbox_rows.retry_parked(session, ids)
    if ids is not None and not released:
        raise click.ClickException(f"no parked outbox message {row_id}")
    click.echo(
        f"{len(released)} outbox messages back in line" + (f": {', '.join(map(str, released))}" if released else "")
    )


@main.group("submissions")
def submissions_group() -> None:
    """Dead submissions: those that could not be made into a job."""


@submissions_group.command("dead")
def submissions_dead() -> None:
    """List the dead submissions with their error and attempts."""
    _print_rows(
        dead_submissions.listing,
        "dead submissions",
        lambda row: (
            f"id={row.id} submission={row.submission_id or '-'} reason={row.reason} attempts={row.attempts} "
            f"first_seen={_when(row.first_seen)} last_seen={_when(row.last_seen)} error={row.error}"
        ),
    )


@submissions_group.command("retry")
@_one_or_all("dead submission")
def submissions_retry(row_id: int | None, every: bool) -> None:
    """Ingest dead submissions again; each one that makes its job is removed. Exit status 1 if any stays dead."""
    ids = _selection(row_id, every)
    app, database = _app_session()
    still_dead = 0
    with app.app_context():
        rows = dead_submissions.listing(database.session, ids)
        database.session.rollback()
        if ids is not None and not rows:
            raise click.ClickException(f"no dead submission {row_id}")
        for row in rows:
            result = dead_submissions.retry(database.session, app.config["SAMPLEDB"], row)
            if result.job_id is not None:
                click.echo(f"id={row.id} submission={row.submission_id or '-'}: job {result.job_id}")
            elif result.duplicate:
                click.echo(
                    f"id={row.id} submission={row.submission_id or '-'}: a duplicate of a recent job, no job made"
                )
            else:
                still_dead += 1
                click.echo(f"id={row.id} submission={row.submission_id or '-'}: still dead: {result.error}")
    if still_dead:
        raise click.ClickException(f"{still_dead} of {len(rows)} submissions are still dead")


@main.command()
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
def purge(dry_run: bool) -> None:
    """Delete sent outbox rows and final jobs past their retention, once; print the rows per table."""
    settings = Settings.from_env()
    engine = database_engine(settings, timeouts_ms=timeouts_ms(settings, workers=True))
    try:
        with so.Session(engine) as session:
            counts = retention.would_purge(session, settings) if dry_run else retention.purge(session, settings)
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    if not settings.job_retention_days:
        click.echo("jobs are kept forever (SAMPLEDB_JOB_RETENTION_DAYS=0)")
    for table, count in counts.by_table().items():
        click.echo(f"{table:<12} {verb} {count:>12,}")


@main.command()
@click.option(
    "--watch",
    "watch_seconds",
    type=click.FloatRange(min=0.5),
    default=None,
    help="refresh in place every SECONDS until Ctrl-C",
)
@click.option(
    "--check",
    is_flag=True,
    help="a monitoring plugin: one line with performance data; exit 0 OK, 1 WARNING, 2 CRITICAL",
)
@click.option("--json", "as_json", is_flag=True, help="every figure and reason as JSON (with --check: its exit codes)")
def status(watch_seconds: float | None, check: bool, as_json: bool) -> None:
    """Show the running service's health; exit 1 naming the reason when a threshold is crossed.

    With --check the exit code tells the level instead: 0 OK, 1 WARNING (items wait for an operator),
    2 CRITICAL (jobs are not announced or swept, or the service cannot be read)."""
    from rich.console import Console
    from rich.live import Live

    if watch_seconds is not None and (check or as_json):
        raise click.UsageError("--watch draws for a terminal: not with --check or --json")
    settings = Settings.from_env()
    # Bounded: a look never waits on a lock or a slow statement for long (status must answer, and stop on Ctrl-C).
    engine = database_engine(settings, timeouts_ms=(10_000, 2_000), pool_pre_ping=True)

    def look():
        snapshot = health.take_snapshot(engine, settings)
        return snapshot, health.problems(snapshot, settings)

    try:
        snapshot, found = look()
        if as_json:
            click.echo(json.dumps(health.as_json(snapshot, found), indent=2))
        elif check:
            click.echo(health.check_line(snapshot, found))
        elif watch_seconds is None:
            Console().print(health.render(snapshot, found))
        else:
            # Ctrl-C ends the watch between two looks: as a flag, not an exception raised inside whatever library
            # call the look is in (a database driver cancelling its query, a Redis socket).
            stop = threading.Event()
            previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
            try:
                with Live(health.render(snapshot, found), auto_refresh=False) as live:
                    while not stop.wait(watch_seconds):
                        snapshot, found = look()
                        live.update(health.render(snapshot, found), refresh=True)
            finally:
                signal.signal(signal.SIGINT, previous)
    finally:
        engine.dispose()
    if check:
        sys.exit(int(health.level_of(found)))
    if found:
        if not as_json:
            click.echo(f"unhealthy: {'; '.join(p.reason for p in found)}", err=True)
        sys.exit(1)


@main.command()
def dev() -> None:
    """Run the whole service here: embedded servers (unless SAMPLEDB_* URLs are set), API, worker, beat, Flower."""
    from app.dev import stack

    sys.exit(stack.run())


@main.command()
@click.option(
    "--submissions",
    "count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="how many synthetic submissions to send",
)
@click.option("--api-url", envvar="SAMPLEDB_API_URL", default=None, help="default: the dev stack's API")
@click.option(
    "--api-key",
    envvar="SAMPLEDB_API_KEY",
    default=None,
    help="an UPLOADER-or-higher key that sees every customer; default: the dev stack's key",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=120,
    show_default=True,
    help="seconds to wait for the last creation messages",
)
@click.option("--seed", type=int, default=None, help="random seed, for a repeatable run")
@click.option(
    "--analyze",
    is_flag=True,
    help="also run simulated analyzers, follow every job to its end and abort one mid-analysis",
)
def demo(
    count: int,
    api_url: str | None,
    api_key: str | None,
    concurrency: int,
    wait_seconds: float,
    seed: int | None,
    analyze: bool,
) -> None:
    """Feed synthetic submissions through the running service and follow them to Kafka."""
    from app.dev import demo as demo_run

    api_url, api_key, settings = service_api(api_url, api_key)
    sys.exit(
        demo_run.run(
            submissions=count,
            api_url=api_url,
            key=api_key,
            bootstrap=settings.kafka_bootstrap_servers,
            kafka_security=settings.kafka_client_options,
            topic=settings.job_topic,
            concurrency=concurrency,
            wait_seconds=wait_seconds,
            seed=seed,
            analyze=analyze,
            site=settings.site,
        )
    )


def service_api(api_url: str | None, api_key: str | None) -> tuple[str, str, Settings]:
    """The API URL and key a client command uses: as given, else the dev stack's in this directory."""
    from app.config import read_dev_env
    from app.dev.stack import KEY_FILE

    settings = Settings.from_env()
    api_url = (api_url or read_dev_env().get("SAMPLEDB_API_URL") or f"http://127.0.0.1:{settings.api_port}").rstrip("/")
    if api_key is None:
        if not KEY_FILE.is_file():
            raise click.ClickException(
                "no API key: pass --api-key (or SAMPLEDB_API_KEY), or run this in the "
                "directory of a running `sampledb-jobs dev`"
            )
        api_key = KEY_FILE.read_text().strip()
    return api_url, api_key, settings


def _analyzer_connection(api_url: str | None, api_key: str | None, bootstrap: str | None) -> Connection:
    api_url, api_key, settings = service_api(api_url, api_key)
    return Connection(
        api_url, api_key, bootstrap or settings.kafka_bootstrap_servers, settings.site, settings.kafka_client_options
    )


main.add_command(analyzer_group(_analyzer_connection), "analyzer")


if __name__ == "__main__":
    sys.exit(main())
