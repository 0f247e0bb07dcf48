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
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
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
from tests.support.celery_worker import service_env
from tests.support.waiting import wait_for

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


def _serve(database_url: str, redis_url: str, celery_broker_url: str, kafka_url: str, log_dir: Path):
    """gunicorn serving the app on these servers, for a generator fixture: yields its URL, then stops it."""
    port = free_port()
    env = service_env(database_url, redis_url, kafka_url, broker_url=celery_broker_url)
    api = Child("gunicorn", log_dir / "api.log")
    api.start(commands.gunicorn("app.factory:create_app()", f"127.0.0.1:{port}"), env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    api.wait_until(lambda left: commands.answers(f"{url}{BASE}/healthz"), 60, "answering")
    yield url
    api.stop()


@pytest.fixture(scope="module")
def served_api(database_url, redis_url, kafka_broker, tmp_path_factory):
    """gunicorn serving the app on the session's database, Redis and Kafka. Its tasks go to a Redis
    database no worker reads: the submissions wait in PostgreSQL, the session's worker never sees them."""
    unread_redis = redis_url.rsplit("/", 1)[0] + "/7"
    yield from _serve(database_url, unread_redis, unread_redis, kafka_broker.url, tmp_path_factory.mktemp("fuzz"))


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


@pytest.fixture(scope="module")
def served_api_with_worker(database_url, redis_url, celery_broker_url, kafka_broker, tmp_path_factory):
    """gunicorn on the session's servers, its tasks to the session's worker: a submission becomes its job."""
    yield from _serve(database_url, redis_url, celery_broker_url, kafka_broker.url, tmp_path_factory.mktemp("fuzz"))


# Operation labels start with the method: "GET /sampledb/v2/job/{job_id}".
JOB_OPERATION = f" {BASE}/job/{{job_id}}"
WORKER_OPERATION = f" {BASE}/worker/{{id_or_short_name}}"


def _exists(status: int) -> bool:
    """An answer about a resource that exists: 2xx, or 409 (a job whose state refuses the change)."""
    return 200 <= status < 300 or status == 409


@pytest.mark.celery
@pytest.mark.parametrize("key_name", ["all customers", "customer acme"])
def test_stateful_scenarios_follow_the_links_with_real_ids(served_api_with_worker, worker, keys, key_name):
    """Sequences of calls chained by the document's links and the ones schemathesis infers from it: a submission's
    202 to its job (made by the session's worker; the scenario waits for it), a job list or search to a job, its
    history and tasks, a PUT or DELETE of it, a task list to a task PUT, a registered analysis worker to its own
    operations. No answer is a 5xx or breaks the document, and the links carry ids that exist: jobs made from the
    scenario's own submissions are reached, as are registered analysis workers.

    The stateless test fuzzes the submission body; here each submission is a valid one (a new sample each time),
    substituted after generation, so that the scenario goes on from a job it made."""
    url = served_api_with_worker
    headers = {"Argus-API-Key": keys[key_name]}
    document = schemathesis.openapi.from_url(f"{url}{BASE}/openapi.json")
    answers: collections.Counter[tuple[str, int]] = collections.Counter()
    submitted_jobs: set[str] = set()
    reached_from_submission: collections.Counter[str] = collections.Counter()
    scenarios = [0]

    class Scenario(document.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case):
            return {"base_url": url, "headers": headers, "timeout": 30}

        def before_call(self, case):
            if case.operation.label.endswith("/submission"):
                case.path_parameters = {"sha256": random.randbytes(32).hex()}
                case.body = {"classification": {"type": "PE", "superType": "executable", "platform": "win"}}
                case.query = {}

        def after_call(self, response, case):
            label = case.operation.label
            answers[(label, response.status_code)] += 1
            if label.endswith("/submission") and response.status_code == 202:
                # The 202 says the job will exist once a worker made it; the steps after act on it.
                job_id = response.json()["data"]["jobID"]
                wait_for(
                    lambda: commands.answers(f"{url}{BASE}/job/{job_id}", headers), 30, f"the job {job_id} of a 202"
                )
                submitted_jobs.add(job_id)
            elif (case.path_parameters or {}).get("job_id") in submitted_jobs and _exists(response.status_code):
                reached_from_submission[label] += 1

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

        def teardown(self):
            scenarios[0] += 1
            super().teardown()

    # The bundles hold ids the live API gave, so hypothesis cannot always draw a scenario the way it drew its
    # prefix before (FlakyStrategyDefinition): schemathesis' own runner starts a new suite then, as this test does.
    scenario_settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.generate],
    )
    for _suite in range(20):
        try:
            Scenario.run(settings=scenario_settings)
            break
        except FlakyStrategyDefinition:
            if scenarios[0] >= EXAMPLES:
                break
    print(
        f"{sum(answers.values())} calls in {scenarios[0]} stateful scenarios, key of {key_name}: "
        f"{len(submitted_jobs)} jobs submitted, reached after by {dict(reached_from_submission)}"
    )
    assert [answer for answer in answers if answer[1] >= 500] == []
    assert submitted_jobs and reached_from_submission, sorted(answers.items())
    assert any(JOB_OPERATION in label and _exists(status) for label, status in answers), sorted(answers.items())
    assert any(WORKER_OPERATION in label and _exists(status) for label, status in answers), sorted(answers.items())


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
