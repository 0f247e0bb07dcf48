"""§8: `sampledb-jobs keys create` and `sampledb-jobs db upgrade`, through click's CliRunner."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from app.cli import main

pytestmark = pytest.mark.committing  # the CLI commits through its own app


@pytest.fixture
def run(database_url):
    """run(*args) -> click Result, with the test database as SAMPLEDB_DATABASE_URL."""
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(
            main, list(args), env={"SAMPLEDB_DATABASE_URL": database_url, **(env or {})}, catch_exceptions=False
        )

    return invoke


def last_line(result) -> str:
    return result.stdout.rstrip("\n").split("\n")[-1]


def test_keys_create_prints_a_working_key_alone_on_the_last_line(run, api, make_job, sql):
    job_id = make_job(customer="acme")
    result = run("keys", "create", "--user", "bob", "--customer", "acme", "--role", "SAMPLEDB-USER")
    assert result.exit_code == 0, result.output
    key = last_line(result)
    assert key and key == key.strip() and " " not in key and len(key) >= 32
    headers = {"Argus-API-Key": key}
    assert [j["id"] for j in api.get("/job", headers=headers)["data"]] == [job_id]
    api.put(f"/job/{job_id}", 403, headers=headers, json={"state": "executing"})  # USER < ANALYZER
    job = api.delete(f"/job/{job_id}", headers=headers)["data"]
    assert job["abortRequestedByUser"]["shortName"] == "bob"
    assert job["abortRequestedByUser"]["customer"]["shortName"] == "acme"
    # Stored only as its hash.
    rows = sql("SELECT key_hash FROM api_keys")
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(),)]
    # Each call makes a new key.
    again = last_line(run("keys", "create", "--user", "bob", "--customer", "acme", "--role", "SAMPLEDB-USER"))
    assert again != key
    api.get("/job", headers={"Argus-API-Key": again})


def test_keys_create_makes_customers_and_grants(run, api, make_job):
    acme, globex, initech = make_job(customer="acme"), make_job(customer="globex"), make_job(customer="initech")
    result = run(
        "keys",
        "create",
        "--user",
        "carol",
        "--customer",
        "newco",
        "--role",
        "SAMPLEDB-VIEWER",
        "--grant-customer",
        "acme",
        "--grant-customer",
        "globex",
    )
    assert result.exit_code == 0, result.output
    body = api.get("/job", headers={"Argus-API-Key": last_line(result)})
    assert {j["id"] for j in body["data"]} == {acme, globex}

    result = run(
        "keys",
        "create",
        "--user",
        "analysis",
        "--customer",
        "mnemonic",
        "--role",
        "SAMPLEDB-ANALYZER",
        "--all-customers",
    )
    headers = {"Argus-API-Key": last_line(result)}
    assert {j["id"] for j in api.get("/job", headers=headers)["data"]} == {acme, globex, initech}
    assert api.put(f"/job/{initech}", headers=headers, json={"state": "executing"})["data"]["state"] == "executing"


def test_keys_create_with_expiry(run, api, clock):
    result = run(
        "keys", "create", "--user", "dave", "--customer", "acme", "--role", "SAMPLEDB-VIEWER", "--expires-in", "1"
    )
    headers = {"Argus-API-Key": last_line(result)}
    api.get("/job", headers=headers)
    clock.shift(1.1)
    api.get("/job", 401, headers=headers)


@pytest.mark.parametrize(
    "args",
    [
        ["--role", "SAMPLEDB-ADMIN"],
        ["--role", "VIEWER"],
        ["--role", "SAMPLEDB-USER", "--expires-in", "0"],
        ["--role", "SAMPLEDB-USER", "--expires-in", "soon"],
    ],
)
def test_keys_create_refuses_bad_options(run, sql, args):
    result = run("keys", "create", "--user", "eve", "--customer", "acme", *args)
    assert result.exit_code == 2
    assert sql("SELECT count(*) FROM api_keys") == [(0,)]


def test_keys_create_requires_user_customer_and_role(run):
    assert run("keys", "create", "--customer", "acme", "--role", "SAMPLEDB-USER").exit_code == 2
    assert run("keys", "create", "--user", "x", "--role", "SAMPLEDB-USER").exit_code == 2
    assert run("keys", "create", "--user", "x", "--customer", "acme").exit_code == 2


def test_bad_setting_stops_the_command_naming_the_variable(run):
    result = run(
        "keys", "create", "--user", "x", "--customer", "acme", "--role", "SAMPLEDB-USER", env={"SAMPLEDB_SITE": "O/S"}
    )
    assert result.exit_code != 0
    assert "SAMPLEDB_SITE" in result.output


def test_db_upgrade_is_idempotent(run, make_job, sql):
    job_id = make_job()
    head = sql("SELECT version_num FROM alembic_version")
    for _ in range(2):
        result = run("db", "upgrade")
        assert result.exit_code == 0, result.output
    assert sql("SELECT version_num FROM alembic_version") == head
    assert sql("SELECT state FROM jobs WHERE id = :id", id=job_id) == [("enqueued",)]
    # The default workers were registered once, not again.
    assert sql("SELECT count(*) FROM analysis_workers") == [(6,)]
