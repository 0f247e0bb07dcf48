"""§5.1: keys (missing, unknown, expired, disabled), roles in order, customer scope."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from app import clock as service_clock
from app.accounts.keys import hash_key
from tests.support.api import BASE, check_envelope
from tests.support.payloads import SAMPLE_SHA256, submission_payload

ROLES = ["VIEWER", "UPLOADER", "USER", "ANALYZER"]


def _worker_body(short_name: str) -> dict:
    return {
        "shortName": short_name,
        "localizedNames": {"english": "Auth test"},
        "localizedDescriptions": {"english": "A worker of the auth tests"},
        "schema": {"type": "object"},
    }


# method, path, body, lowest role, status on success
ENDPOINTS = [
    ("GET", "/job", None, "VIEWER", 200),
    ("POST", "/job/search", {"state": []}, "VIEWER", 200),
    ("GET", "/job/{job}", None, "VIEWER", 200),
    ("PUT", "/job/{job}", {"state": "executing"}, "ANALYZER", 200),
    ("POST", "/job/{job}", {"state": "executing"}, "ANALYZER", 200),
    ("DELETE", "/job/{job}", None, "USER", 200),
    ("GET", "/job/{job}/history", None, "VIEWER", 200),
    ("GET", "/job/{job}/tasks", None, "VIEWER", 200),
    ("GET", "/job/{job}/task/{task}", None, "VIEWER", 200),
    ("PUT", "/job/{job}/task/{task}", {"state": "executing"}, "ANALYZER", 200),
    ("GET", "/worker", None, "VIEWER", 200),
    ("POST", "/worker", "new-worker", "ANALYZER", 201),
    ("GET", "/worker/{worker}", None, "VIEWER", 200),
    ("PUT", "/worker/{worker}", {"localizedNames": {"english": "Renamed"}}, "ANALYZER", 200),
    ("DELETE", "/worker/{worker}", None, "ANALYZER", 200),
    ("GET", "/worker/{worker}/schema", None, "VIEWER", 200),
    # Accepted (202) when Redis takes the task; the test settings point Redis nowhere, so 503 there.
    ("POST", "/sample/{sha256}/submission", "submission", "UPLOADER", None),
]
IDS = [f"{m} {p}" for m, p, *_ in ENDPOINTS]


@pytest.fixture
def target(api, make_key, make_job):
    """A job of customer acme with its first task, and a worker with a result schema."""
    admin = make_key("ANALYZER", customer="acme")
    job_id = make_job(customer="acme")
    task_id = api.get(f"/job/{job_id}", headers=admin)["data"]["tasks"][0]["id"]
    api.post("/worker", 201, headers=admin, json=_worker_body("auth-worker"))
    return {"job": job_id, "task": task_id, "worker": "auth-worker", "sha256": SAMPLE_SHA256}


def _request(client, method, path, body, target, headers):
    if body == "new-worker":
        body = _worker_body(f"w-{uuid.uuid4().hex[:10]}")
    elif body == "submission":
        body = submission_payload("acme", SAMPLE_SHA256)
    return client.open(BASE + path.format(**target), method=method, headers=headers, json=body)


def _accepted(status: int, ok: int | None) -> bool:
    return status == ok if ok is not None else status in (202, 503)


def _status(client, method, path, body, target, headers) -> int:
    response = _request(client, method, path, body, target, headers)
    if path.endswith("/schema") and response.status_code == 200:
        assert response.get_json() == {"type": "object"}  # raw JSON schema, not enveloped
    else:
        check_envelope(response)
    return response.status_code


@pytest.mark.parametrize("method, path, body, lowest, ok", ENDPOINTS, ids=IDS)
def test_missing_unknown_expired_and_disabled_keys_are_401(
    client, make_key, sql, target, method, path, body, lowest, ok
):
    expired = make_key("ANALYZER", all_customers=True)
    sql(
        "UPDATE api_keys SET expires_timestamp = :t WHERE key_hash = :h",
        t=service_clock.now_ms() - 1,
        h=hash_key(expired["Argus-API-Key"]),
    )
    disabled = make_key("ANALYZER", all_customers=True)
    sql("UPDATE api_keys SET disabled = true WHERE key_hash = :h", h=hash_key(disabled["Argus-API-Key"]))
    valid = make_key("ANALYZER", all_customers=True)["Argus-API-Key"]
    altered = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    for headers in (
        {},
        {"Argus-API-Key": ""},
        {"Argus-API-Key": "nonsense"},
        {"Argus-API-Key": altered},
        {"Argus-API-Key": hash_key(valid)},
        {"Authorization": valid},
        expired,
        disabled,
    ):
        response = _request(client, method, path, body, target, headers)
        body_ = check_envelope(response, 401)
        assert body_["messages"][0]["type"] == "ACTION_ERROR"
    # The same request with a good key goes through.
    assert _accepted(_status(client, method, path, body, target, {"Argus-API-Key": valid}), ok)


def test_key_with_expires_in_stops_working_when_it_expires(api, make_key, clock):
    headers = make_key("VIEWER", expires_in=1)
    api.get("/job", headers=headers)
    clock.shift(1.1)
    body = api.get("/job", 401, headers=headers)
    assert "expired" in body["messages"][0]["message"]


@pytest.mark.parametrize("method, path, body, lowest, ok", ENDPOINTS, ids=IDS)
def test_roles_are_ordered_viewer_uploader_user_analyzer(client, api, make_key, target, method, path, body, lowest, ok):
    viewer = make_key("VIEWER", customer="acme")

    def snapshot():
        return (
            api.get(f"/job/{target['job']}", headers=viewer)["data"],
            api.get(f"/job/{target['job']}/history", headers=viewer)["data"],
            api.get("/worker", headers=viewer, query_string={"includeDeleted": "true", "limit": 0})["data"],
        )

    for role in ROLES:
        headers = make_key(role, customer="acme")
        before = snapshot()
        status = _status(client, method, path, body, target, headers)
        if ROLES.index(role) < ROLES.index(lowest):
            assert status == 403, (role, status)
            assert snapshot() == before  # a refused request changes nothing
        else:
            assert _accepted(status, ok), (role, status)


def test_403_names_the_role_needed(api, make_key, make_job):
    job_id = make_job()
    body = api.put(f"/job/{job_id}", 403, headers=make_key("USER"), json={"state": "failed"})
    assert "SAMPLEDB-ANALYZER" in body["messages"][0]["message"]
    body = api.delete(f"/job/{job_id}", 403, headers=make_key("UPLOADER"))
    assert "SAMPLEDB-USER" in body["messages"][0]["message"]
    assert api.get(f"/job/{job_id}", headers=make_key("VIEWER"))["data"]["state"] == "enqueued"


def test_bad_key_is_401_before_anything_else(api, make_job):
    # No key: 401 even for a job that does not exist or a body that is a bad argument.
    api.get(f"/job/{uuid.uuid4()}", 401)
    api.put(f"/job/{uuid.uuid4()}", 401, json={"state": "nonsense"})
    api.post("/job/search", 401, json={"limit": -5})


# -- customer scope ------------------------------------------------------------------------------------


def _without_volatile(body: dict, job_id: str, missing_id: str) -> dict:
    messages = [
        {
            **m,
            "timestamp": 0,
            "message": m["message"].replace(job_id, "ID"),
            "messageTemplate": m["messageTemplate"].replace(job_id, "ID"),
        }
        for m in body["messages"]
    ]
    messages = [
        {
            **m,
            "message": m["message"].replace(missing_id, "ID"),
            "messageTemplate": m["messageTemplate"].replace(missing_id, "ID"),
        }
        for m in messages
    ]
    return {**body, "messages": messages}


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/job/{job}", None),
        ("PUT", "/job/{job}", {"state": "executing"}),
        ("POST", "/job/{job}", {"state": "failed"}),
        ("DELETE", "/job/{job}", None),
        ("GET", "/job/{job}/history", None),
        ("GET", "/job/{job}/tasks", None),
        ("GET", "/job/{job}/task/{task}", None),
        ("PUT", "/job/{job}/task/{task}", {"state": "executing"}),
    ],
)
def test_job_of_another_customer_is_404_exactly_as_a_missing_job(client, api, make_key, make_job, method, path, body):
    theirs = make_job(customer="globex")
    task = api.get(f"/job/{theirs}", headers=make_key("VIEWER", customer="globex"))["data"]["tasks"][0]["id"]
    missing = str(uuid.uuid4())
    mine = make_key("ANALYZER", customer="acme")
    hidden = check_envelope(
        client.open(BASE + path.format(job=theirs, task=task), method=method, headers=mine, json=body), 404
    )
    absent = check_envelope(
        client.open(BASE + path.format(job=missing, task=task), method=method, headers=mine, json=body), 404
    )
    assert _without_volatile(hidden, theirs, missing) == _without_volatile(absent, theirs, missing)
    # And the other customer's job was not touched.
    job = api.get(f"/job/{theirs}", headers=make_key("VIEWER", customer="globex"))["data"]
    assert job["state"] == "enqueued" and job["flags"] == [] and job["tasks"][0]["state"] == "enqueued"


def test_lists_and_searches_show_only_the_keys_customers(api, make_key, make_job):
    acme = {make_job(customer="acme") for _ in range(2)}
    globex = {make_job(customer="globex")}
    initech = {make_job(customer="initech")}
    viewer = make_key("VIEWER", customer="acme")
    body = api.get("/job", headers=viewer)
    assert {j["id"] for j in body["data"]} == acme and body["count"] == 2
    body = api.post("/job/search", headers=viewer, json={"state": []})
    assert {j["id"] for j in body["data"]} == acme and body["count"] == 2

    granted = make_key("VIEWER", customer="acme", grant_customers=("globex",))
    assert {j["id"] for j in api.get("/job", headers=granted)["data"]} == acme | globex
    api.get(f"/job/{next(iter(globex))}", headers=granted)
    api.get(f"/job/{next(iter(initech))}", 404, headers=granted)

    everyone = make_key("VIEWER", customer="acme", all_customers=True)
    body = api.get("/job", headers=everyone)
    assert {j["id"] for j in body["data"]} == acme | globex | initech and body["count"] == 4


def test_customer_criterion_outside_the_scope_matches_nothing(api, make_key, make_job, sql):
    acme = make_job(customer="acme")
    make_job(customer="globex")
    globex_id = sql("SELECT id FROM customers WHERE short_name = 'globex'")[0][0]
    viewer = make_key("VIEWER", customer="acme")
    for criterion in ("globex", globex_id, str(globex_id)):
        body = api.post("/job/search", headers=viewer, json={"customer": criterion})
        assert (body["count"], body["data"]) == (0, []), criterion
    body = api.get("/job", headers=viewer, query_string=[("customer", "globex"), ("customer", "acme")])
    assert [j["id"] for j in body["data"]] == [acme] and body["count"] == 1
    # A customer that does not exist at all is no error either.
    assert api.get("/job", headers=viewer, query_string={"customer": "nobody"})["count"] == 0


def test_granted_customer_criterion_matches(api, make_key, make_job):
    make_job(customer="acme")
    globex = make_job(customer="globex")
    granted = make_key("VIEWER", customer="acme", grant_customers=("globex",))
    body = api.get("/job", headers=granted, query_string={"customer": "globex"})
    assert [j["id"] for j in body["data"]] == [globex]


def test_abort_and_update_recorded_with_the_keys_user(api, make_key, make_job):
    job_id = make_job(customer="acme")
    user = make_key("USER", customer="acme", user="alice")
    analyzer = make_key("ANALYZER", customer="analysis", user="analysis-system", all_customers=True)
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    job = api.delete(f"/job/{job_id}", headers=user)["data"]
    assert job["abortRequestedByUser"]["shortName"] == "alice"
    assert job["abortRequestedByUser"]["customer"]["shortName"] == "acme"
    job = api.put(f"/job/{job_id}", headers=analyzer, json={"state": "aborted"})["data"]
    assert job["lastUpdatedByUser"]["shortName"] == "analysis-system"
    assert job["lastUpdatedByUser"]["customer"]["shortName"] == "analysis"


def test_a_disabled_key_stops_working_once_the_key_cache_expires(app, client, make_key, sql, monkeypatch, clock):
    # Keys are cached per process for SAMPLEDB_API_KEY_CACHE_SECONDS; disabling one takes effect within that time.
    monkeypatch.setitem(app.config, "SAMPLEDB", dataclasses.replace(app.config["SAMPLEDB"], api_key_cache_seconds=1))
    headers = make_key("VIEWER")
    assert client.get("/sampledb/v2/job", headers=headers).status_code == 200
    sql("UPDATE api_keys SET disabled = true WHERE key_hash = :h", h=hash_key(headers["Argus-API-Key"]))
    assert client.get("/sampledb/v2/job", headers=headers).status_code == 200  # still cached
    clock.shift(1.1)
    response = client.get("/sampledb/v2/job", headers=headers)
    assert response.status_code == 401
    assert response.json["messages"][0]["message"] == "API key is disabled"
