"""The `sampledb-jobs` command."""

from __future__ import annotations

import sys

import click

from app.auth import create_key
from app.config import ConfigError, Settings
from app.extensions import db as database
from app.factory import create_app
from app.migrate import upgrade


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
@click.option("--role", required=True, type=click.Choice(
    ["SAMPLEDB-VIEWER", "SAMPLEDB-UPLOADER", "SAMPLEDB-USER", "SAMPLEDB-ANALYZER"]))
@click.option("--grant-customer", "grant_customers", multiple=True, help="another customer the key may see")
@click.option("--all-customers", is_flag=True, help="the key sees every customer (the analysis system)")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, help="seconds until the key expires")
def keys_create(user: str, customer: str, role: str, grant_customers: tuple[str, ...], all_customers: bool,
                expires_in: int | None) -> None:
    """Make an API key; it is printed alone on the last line and never shown again."""
    app = create_app(Settings.from_env())
    with app.app_context():
        session = database.session
        secret = create_key(session, user=user, customer=customer, role=role, grant_customers=grant_customers,
                            all_customers=all_customers, expires_in=expires_in)
        session.commit()
    click.echo(f"API key for {user} ({role}" + (", all customers" if all_customers else "") + "):")
    click.echo(secret)


@main.command()
def dev() -> None:
    """Run the whole service here: embedded servers (unless SAMPLEDB_* URLs are set), API, worker, beat, Flower."""
    from app.dev import stack

    sys.exit(stack.run())


@main.command()
@click.option("--submissions", "count", type=click.IntRange(min=1), default=100, show_default=True,
              help="how many synthetic submissions to send")
@click.option("--api-url", envvar="SAMPLEDB_API_URL", default=None, help="default: the dev stack's API")
@click.option("--api-key", envvar="SAMPLEDB_API_KEY", default=None,
              help="an UPLOADER-or-higher key that sees every customer; default: the dev stack's key")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--wait", "wait_seconds", type=float, default=120, show_default=True,
              help="seconds to wait for the last creation messages")
@click.option("--seed", type=int, default=None, help="random seed, for a repeatable run")
def demo(count: int, api_url: str | None, api_key: str | None, concurrency: int, wait_seconds: float,
         seed: int | None) -> None:
    """Feed synthetic submissions through the running service and follow them to Kafka."""
    from app.dev import demo as demo_run
    from app.config import read_dev_env
    from app.dev.stack import KEY_FILE

    settings = Settings.from_env()
    api_url = (api_url or read_dev_env().get("SAMPLEDB_API_URL") or f"http://127.0.0.1:{settings.api_port}").rstrip("/")
    if api_key is None:
        if not KEY_FILE.is_file():
            raise click.ClickException("no API key: pass --api-key (or SAMPLEDB_API_KEY), or run this in the "
                                       "directory of a running `sampledb-jobs dev`")
        api_key = KEY_FILE.read_text().strip()
    sys.exit(demo_run.run(submissions=count, api_url=api_url, key=api_key, bootstrap=settings.kafka_bootstrap_servers,
                          topic=settings.job_topic, concurrency=concurrency, wait_seconds=wait_seconds, seed=seed))


if __name__ == "__main__":
    sys.exit(main())
