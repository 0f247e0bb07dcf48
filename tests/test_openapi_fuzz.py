"""Fuzzing from the OpenAPI document (schemathesis) against the API served by gunicorn.

Every operation of the document is called with generated requests, valid and invalid, under a real
ANALYZER key: no answer may be a 5xx, and every answer must conform to what the document says of that
operation (status code, content type, headers, body schema). The document must also cover every
operation the app routes, so that nothing escapes the fuzzing by being undocumented.
"""

from __future__ import annotations

import collections
import os
import random
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.dev import commands
from app.dev.processes import Child, free_port
from tests.support.api import BASE

pytestmark = pytest.mark.committing  # gunicorn, another process, must see the test's key and job

ROOT = Path(__file__).resolve().parents[1]
# Rules of the app that are not API operations: the document itself, its viewer and Flask's static files.
NOT_OPERATIONS = {f"{BASE}/openapi.json", f"{BASE}/docs", f"{BASE}/docs/static/<path:filename>"}
# Per operation and key: 50 in `make test` (about 2,500 requests over the document and both keys), more in
# `make fuzz` (SAMPLEDB_FUZZ_EXAMPLES=500).
EXAMPLES = int(os.environ.get("SAMPLEDB_FUZZ_EXAMPLES", "50"))
# A new seed each run, printed; SAMPLEDB_FUZZ_SEED=N runs the same requests again.
SEED = int(os.environ.get("SAMPLEDB_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served_api(database_url, redis_url, kafka_broker, tmp_path_factory):
    """gunicorn serving the app on the session's database, Redis and Kafka. Its tasks go to a Redis
    database no worker reads: the submissions wait in PostgreSQL, the session's worker never sees them."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    unread_redis = redis_url.rsplit("/", 1)[0] + "/7"
    env.update(
        SAMPLEDB_DATABASE_URL=database_url,
        SAMPLEDB_REDIS_URL=unread_redis,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_broker.url,
        SAMPLEDB_SITE="OSL",
    )
    api = Child("gunicorn", tmp_path_factory.mktemp("fuzz") / "api.log")
    api.start(commands.gunicorn("app.factory:create_app()", f"127.0.0.1:{port}"), env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    api.wait_until(lambda left: commands.answers(f"{url}{BASE}/healthz"), 60, "answering")
    yield url
    api.stop()


@pytest.fixture
def keys(make_key, make_job) -> dict[str, str]:
    """An all-customers key (the analysis system's) and a key of one customer (an analyst's), each with a job."""
    make_job(customer="acme")  # something to list, fetch and page through
    make_job(customer="globex")
    return {
        "all customers": make_key("ANALYZER", all_customers=True)["Argus-API-Key"],
        "customer acme": make_key("ANALYZER", customer="acme")["Argus-API-Key"],
    }


@pytest.mark.parametrize("key_name", ["all customers", "customer acme"])
def test_every_documented_operation_answers_as_documented(served_api, keys, key_name):
    # The document as the served app publishes it; each operation is its own hypothesis run, so a
    # failure names the operation and its smallest failing request.
    document = schemathesis.openapi.from_url(f"{served_api}{BASE}/openapi.json")
    failures, calls = [], collections.Counter()
    operations = [result.ok() for result in document.get_all_operations()]
    assert operations
    for operation in operations:
        requests = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @seed(SEED)
        @given(case=requests)
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case) -> None:
            calls[case.operation.label] += 1
            case.call_and_validate(
                base_url=served_api, headers={"Argus-API-Key": keys[key_name]}, checks=CHECKS, timeout=30
            )

        try:
            answers_as_documented()
        except (
            Exception,
            BaseExceptionGroup,
        ) as err:  # every operation is fuzzed; all the failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {err}")
    print(f"{sum(calls.values())} requests over {len(calls)} operations, key of {key_name}, seed {SEED}")
    assert failures == [], f"SAMPLEDB_FUZZ_SEED={SEED} sends these requests again\n\n" + "\n\n".join(failures)
    assert {operation.label for operation in operations} == set(calls)  # every operation was called


def test_every_routed_operation_is_documented(app, client):
    document = client.get(f"{BASE}/openapi.json").get_json()
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
        if method != "parameters"
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(BASE + "/") or rule.rule in NOT_OPERATIONS:
            continue
        # /job/<uuid:job_id> is documented as /job/{job_id}
        path = "/".join(
            "{" + part[1:-1].split(":")[-1] + "}" if part.startswith("<") else part for part in rule.rule.split("/")
        )
        routed.update((path, method) for method in rule.methods - {"HEAD", "OPTIONS"})
    assert routed - documented == set()
    assert documented - routed == set()
