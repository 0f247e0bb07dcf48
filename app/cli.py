"""The `sampledb-jobs` command."""

from __future__ import annotations

import sys

import click

from app.config import ConfigError, Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


@click.group()
def main() -> None:
    """SampleDB jobs: the analysis-job service of a malware sample database."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations."""
    from app.migrate import upgrade

    settings = load_settings()
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
    from app.auth import create_key
    from app.extensions import db as database
    from app import create_app

    app = create_app(load_settings())
    with app.app_context():
        session = database.session
        secret = create_key(session, user=user, customer=customer, role=role, grant_customers=grant_customers,
                            all_customers=all_customers, expires_in=expires_in)
        session.commit()
    click.echo(f"API key for {user} ({role}" + (", all customers" if all_customers else "") + "):")
    click.echo(secret)


if __name__ == "__main__":
    sys.exit(main())
