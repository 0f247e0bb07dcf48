"""Every error code of §5.2 in the Argus envelope: 400, 404, 405, 409, 412, 413, 415 (401/403 in test_auth)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.api import BASE, check_envelope


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", all_customers=True)


def _fields(body: dict) -> list[str]:
    assert all(m["type"] == "FIELD_ERROR" for m in body["messages"]), body["messages"]
    return sorted(m["field"] for m in body["messages"])


# -- 400: a body that is not JSON -----------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"{'state': 'done'}", b"state=done", b"\xff\xfe{}", b'{"state": "done"} x'])
def test_body_that_is_not_json_is_400(api, analyzer, make_job, raw):
    job_id = make_job()
    body = api.put(f"/job/{job_id}", 400, headers=analyzer, data=raw, content_type="application/json")
    assert body["messages"][0]["type"] == "ACTION_ERROR"
    assert "JSON" in body["messages"][0]["message"]
    # Nothing changed.
    assert api.get(f"/job/{job_id}", headers=analyzer)["data"]["state"] == "enqueued"


def test_search_body_that_is_not_json_is_400(api, analyzer):
    api.post("/job/search", 400, headers=analyzer, data=b'{"limit": ', content_type="application/json")


def test_json_that_is_not_an_object_is_412_not_400(api, analyzer):
    # `null`, `[]` and `"x"` are JSON; they are the wrong type of argument, like any other bad argument.
    for raw in (b"null", b"[]", b'"done"', b"42"):
        body = api.post("/job/search", 412, headers=analyzer, data=raw, content_type="application/json")
        assert body["messages"][0]["type"] == "FIELD_ERROR"


def test_too_deeply_nested_body_is_refused_not_a_crash(api, analyzer):
    deep = "[" * 500 + "]" * 500
    body = api.post("/worker", 412, headers=analyzer, data=deep, content_type="application/json")
    assert "nested" in body["messages"][0]["message"]
    # A recursion deeper than Python's own limit is not JSON we can read: 400.
    api.post("/job/search", 400, headers=analyzer, data="[" * 200_000 + "]" * 200_000, content_type="application/json")


# -- 404 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/job/search/more",
        "/jobs",
        "/job/not-a-uuid",
        "/job/123/tasks",
        f"/job/{uuid.uuid4()}/task/not-a-uuid",
        "/sample",
        "/",
    ],
)
def test_unknown_route_is_404_in_the_envelope(api, analyzer, path):
    body = api.get(path, 404, headers=analyzer)
    assert body["messages"][0]["type"] == "ACTION_ERROR"


def test_unknown_route_outside_the_base_path_is_404_in_the_envelope(client):
    check_envelope(client.get("/nothing/here"), 404)
    check_envelope(client.get("/sampledb/v1/job"), 404)


def test_unknown_route_with_a_body_is_404_not_415(api, analyzer):
    api.post("/nope", 404, headers=analyzer, data="plain text", content_type="text/plain")


def test_missing_job_task_and_worker_are_404(api, analyzer, make_job):
    job_id = make_job()
    missing = uuid.uuid4()
    api.get(f"/job/{missing}", 404, headers=analyzer)
    api.get(f"/job/{missing}/history", 404, headers=analyzer)
    api.get(f"/job/{missing}/tasks", 404, headers=analyzer)
    api.put(f"/job/{missing}", 404, headers=analyzer, json={"state": "executing"})
    api.delete(f"/job/{missing}", 404, headers=analyzer)
    api.get(f"/job/{job_id}/task/{missing}", 404, headers=analyzer)
    api.put(f"/job/{job_id}/task/{missing}", 404, headers=analyzer, json={"state": "executing"})
    # A task of another job is not a task of this one.
    other = make_job()
    other_task = api.get(f"/job/{other}", headers=analyzer)["data"]["tasks"][0]["id"]
    api.get(f"/job/{job_id}/task/{other_task}", 404, headers=analyzer)
    api.get("/worker/no-such-worker", 404, headers=analyzer)
    api.get(f"/worker/{missing}", 404, headers=analyzer)
    api.get("/worker/no-such-worker/schema", 404, headers=analyzer)
    api.put("/worker/no-such-worker", 404, headers=analyzer, json={})
    api.delete("/worker/no-such-worker", 404, headers=analyzer)


# -- 405 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/job"),
        ("PUT", "/job"),
        ("DELETE", "/job"),
        ("PATCH", "/job"),
        ("GET", "/job/search"),
        ("PUT", "/job/search"),
        ("PATCH", "/job/{job}"),
        ("POST", "/job/{job}/history"),
        ("DELETE", "/job/{job}/tasks"),
        ("POST", "/job/{job}/task/{task}"),
        ("DELETE", "/job/{job}/task/{task}"),
        ("PUT", "/worker"),
        ("DELETE", "/worker"),
        ("POST", "/worker/static-analyzer"),
        ("PUT", "/worker/static-analyzer/schema"),
    ],
)
def test_method_not_allowed_is_405(api, analyzer, make_job, method, path):
    job_id = make_job()
    task_id = api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"][0]["id"]
    response = api.client.open(
        BASE + path.format(job=job_id, task=task_id), method=method, headers=analyzer, json={"state": "done"}
    )
    body = check_envelope(response, 405)
    assert body["messages"][0]["type"] == "ACTION_ERROR"
    assert method not in response.headers["Allow"]


def test_post_job_is_405_whatever_the_body(api, analyzer, make_job):
    # Jobs are only created from submissions; a job-shaped, empty or non-JSON body changes nothing.
    api.post("/job", 405, headers=analyzer, json={"state": "enqueued"})
    api.post("/job", 405, headers=analyzer)
    api.post("/job", 405, headers=analyzer, data="x", content_type="text/plain")
    api.post("/job", 405)  # not even a key: the route does not exist for POST
    assert api.get("/job", headers=analyzer, query_string={"state": []})["count"] == 0


# -- 409 -------------------------------------------------------------------------------------------


def test_state_conflict_is_409_naming_both_states(api, analyzer, make_job):
    job_id = make_job()
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "failed"})
    body = api.put(f"/job/{job_id}", 409, headers=analyzer, json={"state": "done"})
    text = body["messages"][0]["message"]
    assert body["messages"][0]["type"] == "ACTION_ERROR"
    assert "failed" in text and "done" in text


# -- 412: one FIELD_ERROR per bad field, naming it --------------------------------------------------


def test_search_body_every_bad_field_named(api, analyzer):
    body = api.post(
        "/job/search",
        412,
        headers=analyzer,
        json={
            "limit": -1,
            "offset": "x",
            "state": ["nope"],
            "sampleSha256": ["zz"],
            "bogus": 1,
            "timeMatchStrategy": "some",
            "sortBy": ["color"],
        },
    )
    assert _fields(body) == ["bogus", "limit", "offset", "sampleSha256", "sortBy", "state", "timeMatchStrategy"]
    assert body["data"] is None


def test_search_query_every_bad_field_named(api, analyzer):
    body = api.get(
        "/job",
        412,
        headers=analyzer,
        query_string=[
            ("limit", "10001"),
            ("offset", "-1"),
            ("bogus", "1"),
            ("state", "done"),
            ("state", "later"),
            ("customer", ""),
        ],
    )
    assert _fields(body) == ["bogus", "customer", "limit", "offset", "state"]


@pytest.mark.parametrize(
    "path",
    [
        "/job/{job}",
        "/job/{job}/history",
        "/job/{job}/task/{task}",
        "/worker/static-analyzer",
        "/worker/static-analyzer/schema",
    ],
)
def test_unknown_query_parameter_is_412(api, analyzer, make_job, path):
    job_id = make_job()
    task_id = api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"][0]["id"]
    body = api.get(path.format(job=job_id, task=task_id), 412, headers=analyzer, query_string={"verbose": "1"})
    assert _fields(body) == ["verbose"]


def test_job_update_bad_fields(api, analyzer, make_job):
    job_id = make_job()
    body = api.put(
        f"/job/{job_id}", 412, headers=analyzer, json={"state": "finished", "message": "x" * 4097, "progress": 50}
    )
    assert _fields(body) == ["message", "progress", "state"]
    assert _fields(api.put(f"/job/{job_id}", 412, headers=analyzer, json={})) == ["state"]
    assert _fields(api.put(f"/job/{job_id}", 412, headers=analyzer, json={"state": 1})) == ["state"]
    assert _fields(api.put(f"/job/{job_id}", 412, headers=analyzer, json={"state": None})) == ["state"]
    # 4,096 characters is the bound itself: accepted.
    assert (
        api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing", "message": "y" * 4096})["data"][
            "message"
        ]
        == "y" * 4096
    )


def test_task_update_bad_fields(api, analyzer, make_job):
    job_id = make_job()
    task_id = api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"][0]["id"]
    body = api.put(
        f"/job/{job_id}/task/{task_id}",
        412,
        headers=analyzer,
        json={"state": "timeout", "analyses": ["not-a-uuid"], "message": 5, "score": 1},
    )
    # timeout is the sweep's, not an analyzer's, to set on a task.
    assert _fields(body) == ["analyses", "message", "score", "state"]


def test_nested_unknown_field_is_named_with_its_path(api, analyzer):
    body = api.post(
        "/worker",
        412,
        headers=analyzer,
        json={
            "shortName": "bad name!",
            "localizedNames": {"english": "X", "klingon": "Y"},
            "localizedDescriptions": {"norwegian": "Z"},
            "accepts": {"platform": "win", "colour": ["red"]},
        },
    )
    assert _fields(body) == [
        "accepts.colour",
        "accepts.platform",
        "localizedDescriptions.english",
        "localizedNames.klingon",
        "shortName",
    ]


def test_text_postgresql_cannot_store_is_412_not_500(api, analyzer, make_job):
    job_id = make_job()
    for bad in ('"a\\u0000b"', '"a\\ud800b"'):
        raw = f'{{"state": "executing", "message": {bad}}}'
        body = api.put(f"/job/{job_id}", 412, headers=analyzer, data=raw, content_type="application/json")
        assert _fields(body) == ["message"]
    body = api.get("/job", 412, headers=analyzer, query_string={"customer": "a\x00b"})
    assert _fields(body) == ["customer"]
    api.get("/worker/a%00b", 404, headers=analyzer)


# -- 413 and 415 -------------------------------------------------------------------------------------


def test_body_over_one_mib_is_413(api, analyzer, make_job):
    job_id = make_job()
    big = json.dumps({"state": "executing", "message": "x" * (1024 * 1024)})
    body = api.put(f"/job/{job_id}", 413, headers=analyzer, data=big, content_type="application/json")
    assert body["messages"][0]["type"] == "ACTION_ERROR"
    api.post("/job/search", 413, headers=analyzer, data=" " * (1024 * 1024 + 1), content_type="application/json")
    # Just under the bound the body is read (and refused for its too-long message: 412, not 413).
    fits = json.dumps({"state": "executing", "message": "x" * (1024 * 1024 - 100)})
    api.put(f"/job/{job_id}", 412, headers=analyzer, data=fits, content_type="application/json")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
def test_body_that_is_not_application_json_is_415(api, analyzer, make_job, content_type):
    job_id = make_job()
    body = api.put(f"/job/{job_id}", 415, headers=analyzer, data='{"state": "executing"}', content_type=content_type)
    assert body["messages"][0]["type"] == "ACTION_ERROR"
    api.delete(f"/job/{job_id}", 415, headers=analyzer, data='{"reason": "x"}', content_type=content_type)
    assert api.get(f"/job/{job_id}", headers=analyzer)["data"]["state"] == "enqueued"


def test_body_without_content_type_is_415(api, analyzer):
    response = api.client.post(BASE + "/job/search", headers=analyzer, data=b'{"limit": 1}')
    check_envelope(response, 415)


def test_application_json_with_charset_is_json(api, analyzer, make_job):
    job_id = make_job()
    body = api.put(
        f"/job/{job_id}",
        headers=analyzer,
        data='{"state": "executing"}',
        content_type="application/json; charset=utf-8",
    )
    assert body["data"]["state"] == "executing"


def test_double_slashes_are_404_not_a_redirect(api, analyzer, make_job):
    job_id = make_job()
    api.get(f"//job/{job_id}", 404, headers=analyzer)
    api.get(f"/job//{job_id}", 404, headers=analyzer)
    api.delete("/worker//static-analyzer", 404, headers=analyzer)
    assert api.get(f"/job/{job_id}", headers=analyzer)["data"]["state"] == "enqueued"
