"""§11 through mnemonic's own SDK (argus-api 5.1.0), unchanged, against the app served over HTTP:
each call works and answers what Argus' schema describes."""

from __future__ import annotations

import uuid

import pytest
from argus_api.exceptions.http import AccessDeniedException, ObjectNotFoundException, ValidationErrorException
from argus_api.lib.sampledb.v2 import sample
from argus_api.lib.sampledb.v2.policy import policy_default as sdk

from tests.support.live_server import argus_model, schema_problems, sdk_session, serve
from tests.support.payloads import SAMPLE_SHA256
from tests.test_api_analysis_workers import worker_body

# The app serves from threads of its own, each with its own connection: the tests commit for real.
pytestmark = pytest.mark.committing

DEFAULT_WORKERS = [
    "document-analyzer",
    "sandbox-android",
    "sandbox-linux",
    "sandbox-macos",
    "sandbox-windows",
    "static-analyzer",
]
INTERNET = "meta.sampledb.allowInternetAccess"


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as base_url:
        yield base_url


@pytest.fixture
def analyzer(url, make_key):
    return sdk_session(url, make_key("ANALYZER", customer="acme", user="policy-admin"))


def conforms(body: dict, model: str, status: int = 200, *, exact: bool = True) -> dict:
    assert body["responseCode"] == status, body
    assert schema_problems(body["data"], argus_model(model), exact=exact) == []
    return body["data"]


def test_read_and_replace_the_default_policy(url, analyzer, make_key):
    policy = conforms(sdk.get_default_analysis_policy(api_session=analyzer), "AnalysisPolicyResponse")
    assert [w["shortName"] for w in policy["workers"]] == DEFAULT_WORKERS  # a fresh installation: every worker
    assert policy["options"] == [] and all(uuid.UUID(w["id"]) and w["localizedName"] for w in policy["workers"])

    changed = conforms(
        sdk.update_default_analysis_policy(
            workers=["static-analyzer", "sandbox-windows"],
            options=[{"key": INTERNET, "value": "true"}],
            api_session=analyzer,
        ),
        "AnalysisPolicyResponse",
    )
    assert [w["shortName"] for w in changed["workers"]] == ["static-analyzer", "sandbox-windows"]
    assert changed["options"] == [{"key": INTERNET, "value": "true"}]
    assert changed["lastUpdatedByUser"]["shortName"] == "policy-admin"
    assert changed["lastUpdatedTimestamp"] >= policy["lastUpdatedTimestamp"]
    assert sdk.get_default_analysis_policy(api_session=analyzer)["data"] == changed

    viewer = sdk_session(url, make_key("VIEWER", customer="acme"))
    assert sdk.get_default_analysis_policy(api_session=viewer)["data"] == changed
    with pytest.raises(AccessDeniedException):
        sdk.update_default_analysis_policy(workers=["static-analyzer"], api_session=viewer)
    with pytest.raises(ValidationErrorException) as refused:
        sdk.update_default_analysis_policy(workers=["no-such-worker"], api_session=analyzer)
    assert refused.value.response.json()["messages"][0]["field"] == "workers"


def test_rules_add_get_update_list_delete(url, analyzer, make_key, api):
    api.post(
        "/worker",
        201,
        headers=make_key("ANALYZER"),
        json=worker_body("document-sandbox", accepts={"superType": ["document"]}),
    )
    added = sdk.add_default_analysis_rule(
        name="acme documents",
        description="acme's documents also go to the document sandbox, offline",
        match={"customer": {"customerOrGroup": ["acme"]}},
        action={"workers": {"add": ["document-sandbox"]}, "options": {"add": [{"key": INTERNET, "value": "false"}]}},
        api_session=analyzer,
    )
    rule = conforms(added, "AnalysisRuleResponse", 201)
    assert rule["match"]["customer"]["customer"][0]["shortName"] == "acme"
    assert [w["shortName"] for w in rule["action"]["workers"]["add"]] == ["document-sandbox"]
    assert rule["action"]["options"]["add"] == [{"key": INTERNET, "value": "false"}]
    assert rule["flags"] == [] and rule["createdByUser"]["shortName"] == "policy-admin"
    assert rule["deletedTimestamp"] is None and rule["deletedByUser"] is None

    assert (
        conforms(sdk.get_default_analysis_policy_rule(rule["id"], api_session=analyzer), "AnalysisRuleResponse") == rule
    )

    other = sdk_session(url, make_key("ANALYZER", customer="acme", user="policy-editor"))
    updated = conforms(
        sdk.update_default_analysis_rule(
            rule["id"],
            name="acme documents, offline",
            match={"classification": {"superType": ["document"]}},
            api_session=other,
        ),
        "AnalysisRuleResponse",
    )
    assert updated["name"] == "acme documents, offline" and updated["description"] == rule["description"]
    assert updated["match"] == {"classification": {"type": [], "superType": ["document"]}}
    assert updated["action"] == rule["action"]  # a clause not given stays
    assert updated["lastUpdatedByUser"]["shortName"] == "policy-editor"
    assert updated["createdByUser"]["shortName"] == "policy-admin"

    listed = sdk.list_default_analysis_rules(api_session=analyzer)
    assert [r["id"] for r in listed["data"]] == [rule["id"]] and listed["count"] == 1
    assert all(schema_problems(r, argus_model("AnalysisRuleResponse")) == [] for r in listed["data"])

    deleted = conforms(sdk.delete_default_analysis_rule(rule["id"], api_session=other), "AnalysisRuleResponse")
    assert deleted["flags"] == ["deleted"] and deleted["deletedByUser"]["shortName"] == "policy-editor"
    assert deleted["deletedTimestamp"] >= deleted["createdTimestamp"]
    assert sdk.list_default_analysis_rules(api_session=analyzer)["data"] == []
    with_deleted = sdk.list_default_analysis_rules(includeDeleted=True, api_session=analyzer)
    assert [r["id"] for r in with_deleted["data"]] == [rule["id"]] and with_deleted["data"][0] == deleted
    # A deleted rule can still be read, and deleting it again changes nothing.
    assert sdk.get_default_analysis_policy_rule(rule["id"], api_session=analyzer)["data"] == deleted
    assert sdk.delete_default_analysis_rule(rule["id"], api_session=analyzer)["data"] == deleted

    with pytest.raises(ObjectNotFoundException):
        sdk.get_default_analysis_policy_rule(str(uuid.uuid4()), api_session=analyzer)
    viewer = sdk_session(url, make_key("VIEWER", customer="acme"))
    with pytest.raises(AccessDeniedException):
        sdk.delete_default_analysis_rule(rule["id"], api_session=viewer)


def test_reanalyse_sample(url, make_key, make_job, api):
    user = sdk_session(url, make_key("USER", customer="acme", user="reanalyst"))
    first = make_job(customer="acme")
    analyzer = make_key("ANALYZER", customer="acme")
    # While the ingested job is active, reanalysis answers it and makes none.
    answered = conforms(sample.reanalyse_sample(SAMPLE_SHA256, api_session=user), "JobResponse", exact=False)
    assert answered["id"] == first
    api.put(f"/job/{first}", headers=analyzer, json={"state": "done"})

    job = conforms(sample.reanalyse_sample(SAMPLE_SHA256, api_session=user), "JobResponse", exact=False)
    assert job["id"] != first and job["state"] == "enqueued"
    assert job["analysedSample"]["id"] == SAMPLE_SHA256 and job["customer"]["shortName"] == "acme"
    assert [t["worker"] for t in job["tasks"]] == ["sandbox-windows", "static-analyzer"]
    assert job["lastUpdatedByUser"]["shortName"] == "reanalyst"

    stranger = sdk_session(url, make_key("USER", customer="someone-else"))
    with pytest.raises(ObjectNotFoundException):
        sample.reanalyse_sample(SAMPLE_SHA256, api_session=stranger)
    viewer = sdk_session(url, make_key("VIEWER", customer="acme"))
    with pytest.raises(AccessDeniedException):
        sample.reanalyse_sample(SAMPLE_SHA256, api_session=viewer)


@pytest.mark.celery
def test_a_worker_added_through_the_sdk_gets_its_task_on_the_very_next_submission(
    url, analyzer, worker, task_sender, sql
):
    """Found from outside: an Argus client that registered a worker and submitted at once got the old policy
    (each process kept it up to SAMPLEDB_POLICY_CACHE_SECONDS, 5 s). The Celery worker here runs with the
    default cache and has just read the policy; the worker registered by the API process reaches its next job."""
    from argus_api.lib.sampledb.v2 import worker as workers_sdk

    from app.intake.ingest import job_id_for
    from celeryconfig import TaskNames
    from tests.support.payloads import submission_payload
    from tests.support.waiting import wait_for

    def ingested_tasks(payload: dict) -> list[str]:
        job_id = str(job_id_for(payload["submission"]["id"]))
        task_sender.send(TaskNames.INGEST_SUBMISSION, payload)
        wait_for(lambda: sql("SELECT count(*) FROM jobs WHERE id = :id", id=job_id)[0][0], 30, "the job")
        rows = sql("SELECT worker FROM job_tasks WHERE job_id = :id ORDER BY worker", id=job_id)
        return [row[0] for row in rows]

    # Each submission alone, one after another: every pool process of the worker has read the policy (each
    # keeps its own snapshot; eight in a row leave a process without one once in 128 runs).
    for _ in range(8):
        assert "yara-scanner" not in ingested_tasks(submission_payload(customer="acme"))
    added = workers_sdk.add_analysis_worker(
        shortName="yara-scanner",
        localizedNames={"english": "YARA scanner"},
        localizedDescriptions={"english": "Matches YARA rules"},
        api_session=analyzer,
    )
    assert added["data"]["shortName"] == "yara-scanner"
    assert "yara-scanner" in ingested_tasks(submission_payload(customer="acme"))
