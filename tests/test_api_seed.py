"""The user's own examples (seed/sampledb-jobs-api.txt), sent exactly as written, and the job's shape (§2)."""

from __future__ import annotations

from app import clock as service_clock
from tests.support.api import check_envelope
from tests.support.payloads import SAMPLE_SHA256, submission_payload

JOB_KEYS = {
    "id",
    "state",
    "flags",
    "site",
    "analysedSample",
    "customer",
    "submission",
    "classification",
    "tasks",
    "options",
    "enqueuedTimestamp",
    "startTimestamp",
    "endTimestamp",
    "lastUpdatedTimestamp",
    "lastUpdatedByUser",
    "abortRequestedTimestamp",
    "abortRequestedByUser",
    "abortReason",
    "message",
}
TASK_KEYS = {
    "id",
    "worker",
    "state",
    "enqueuedTimestamp",
    "startTimestamp",
    "endTimestamp",
    "lastUpdatedTimestamp",
    "analyses",
    "message",
}
USER_KEYS = {"id", "shortName", "name", "customer"}
CUSTOMER_KEYS = {"id", "shortName", "name", "domain"}


def test_seed_update_with_post_returns_the_updated_job(client, make_key, make_job):
    job_id = make_job()
    key = make_key("ANALYZER", all_customers=True)["Argus-API-Key"]
    # curl -X POST -H "Argus-API-Key: my/api/key" -H "Content-Type: application/json" .../job/<job id> -d '{...}'
    response = client.post(
        f"/sampledb/v2/job/{job_id}",
        headers={"Argus-API-Key": key, "Content-Type": "application/json"},
        data='{\n\t"state": "executing"\n}',
    )
    body = check_envelope(response, 200)
    assert body["data"]["id"] == job_id and body["data"]["state"] == "executing"
    assert body["data"]["startTimestamp"] is not None


def test_seed_update_with_put_returns_the_updated_job(client, make_key, make_job):
    job_id = make_job()
    key = make_key("ANALYZER", all_customers=True)["Argus-API-Key"]
    response = client.put(
        f"/sampledb/v2/job/{job_id}",
        headers={"Argus-API-Key": key, "Content-Type": "application/json"},
        data='{\n\t"state": "executing"\n}',
    )
    body = check_envelope(response, 200)
    assert body["data"]["state"] == "executing"
    assert set(body["data"]) == JOB_KEYS


def test_seed_abort_returns_the_job_with_the_abort_recorded(client, make_key, make_job):
    job_id = make_job()
    key = make_key("USER")["Argus-API-Key"]
    # curl -X DELETE -H "Argus-API-Key: my/api/key" .../job/<job id>
    body = check_envelope(client.delete(f"/sampledb/v2/job/{job_id}", headers={"Argus-API-Key": key}), 200)
    job = body["data"]
    assert job["id"] == job_id and job["state"] == "aborted"
    assert job["abortRequestedTimestamp"] is not None and job["abortRequestedByUser"] is not None


def test_seed_list_shows_only_active_jobs(client, make_key, make_job, sql):
    active = {make_job(), make_job()}
    for final in ("done", "failed", "timeout", "aborted"):
        sql("UPDATE jobs SET state = :s WHERE id = :id", s=final, id=make_job())
    executing = make_job()
    sql("UPDATE jobs SET state = 'executing' WHERE id = :id", id=executing)
    key = make_key("VIEWER")["Argus-API-Key"]
    # curl -H "Argus-API-Key: my/api/key" .../job
    body = check_envelope(client.get("/sampledb/v2/job", headers={"Argus-API-Key": key}), 200)
    assert {j["id"] for j in body["data"]} == active | {executing}
    assert body["count"] == 3 and body["limit"] == 25 and body["offset"] == 0


def test_seed_fetch_returns_all_information_about_the_job(client, make_key, make_job):
    job_id = make_job(customer="acme")
    key = make_key("VIEWER", customer="acme")["Argus-API-Key"]
    body = check_envelope(client.get(f"/sampledb/v2/job/{job_id}", headers={"Argus-API-Key": key}), 200)
    job = body["data"]
    assert set(job) == JOB_KEYS
    assert job["id"] == job_id and job["site"] == "OSL" and job["flags"] == []
    assert job["analysedSample"] == {"id": SAMPLE_SHA256, "size": None}
    assert set(job["customer"]) == CUSTOMER_KEYS and job["customer"]["shortName"] == "acme"
    assert job["customer"]["domain"] is None
    expected = submission_payload()
    assert set(job["submission"]) == set(expected["submission"])
    assert job["submission"]["sample"] == {"id": SAMPLE_SHA256}
    assert job["classification"]["type"] == "PE" and job["classification"]["platform"] == "win"
    assert job["tasks"] and all(set(t) == TASK_KEYS for t in job["tasks"])
    for name in ("enqueuedTimestamp", "lastUpdatedTimestamp"):
        # Milliseconds: an int, within a minute of now.
        assert isinstance(job[name], int) and abs(job[name] - service_clock.now_ms()) < 60_000
    for task in job["tasks"]:
        assert (
            isinstance(task["enqueuedTimestamp"], int)
            and abs(task["enqueuedTimestamp"] - job["enqueuedTimestamp"]) < 1000
        )
        assert task["analyses"] == [] and task["message"] is None


def test_seed_search_body_runs(client, make_key, make_job, sql):
    now = service_clock.now_ms()
    day = 86_400_000
    aborted_recently = make_job()
    sql(
        "UPDATE jobs SET state = 'aborted', enqueued_timestamp = :e, end_timestamp = :t, last_updated_timestamp = :t "
        "WHERE id = :id",
        e=now - 3 * day,
        t=now - 2 * day,
        id=aborted_recently,
    )
    timed_out_recently = make_job()
    sql(
        "UPDATE jobs SET state = 'timeout', enqueued_timestamp = :e, start_timestamp = :e, end_timestamp = :t, "
        "last_updated_timestamp = :t WHERE id = :id",
        e=now - 10 * day,
        t=now - 1 * day,
        id=timed_out_recently,
    )
    aborted_long_ago = make_job()
    sql(
        "UPDATE jobs SET state = 'aborted', enqueued_timestamp = :t, end_timestamp = :t, last_updated_timestamp = :t "
        "WHERE id = :id",
        t=now - 30 * day,
        id=aborted_long_ago,
    )
    done_recently = make_job()
    sql("UPDATE jobs SET state = 'done', end_timestamp = :t WHERE id = :id", t=now - day, id=done_recently)
    key = make_key("VIEWER")["Argus-API-Key"]
    seed_body = """{
	"state": [
		"aborted",
		"timeout"
	],
	"startTimestamp": "now - 1 week",
	"endTimestamp": "now",
	"timeFieldStrategy": [
		"enqueuedTimestamp",
		"startTimestamp",
		"endTimestamp"
	],
	"timeMatchStrategy": "any"
}"""
    response = client.post(
        "/sampledb/v2/job/search", headers={"Argus-API-Key": key, "Content-Type": "application/json"}, data=seed_body
    )
    body = check_envelope(response, 200)
    assert {j["id"] for j in body["data"]} == {aborted_recently, timed_out_recently}
    assert body["count"] == 2


def _timestamps(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("submission", "classification"):
                continue  # as received from the sample service (the seed's example has 123 there)
            if key.lower().endswith("timestamp"):
                yield f"{path}{key}", value
            yield from _timestamps(value, f"{path}{key}.")
    elif isinstance(node, list):
        for item in node:
            yield from _timestamps(item, path)


def test_every_timestamp_is_integer_milliseconds(api, make_key, make_job):
    job_id = make_job()
    headers = make_key("ANALYZER", all_customers=True)
    task_id = api.get(f"/job/{job_id}", headers=headers)["data"]["tasks"][0]["id"]
    api.put(f"/job/{job_id}/task/{task_id}", headers=headers, json={"state": "executing"})
    api.delete(f"/job/{job_id}", headers=headers)
    api.put(f"/job/{job_id}", headers=headers, json={"state": "aborted"})
    api.delete("/worker/sandbox-linux", headers=headers)
    bodies = [
        api.get(f"/job/{job_id}", headers=headers),
        api.get(f"/job/{job_id}/history", headers=headers),
        api.get(f"/job/{job_id}/tasks", headers=headers),
        api.post("/job/search", headers=headers, json={"state": []}),
        api.get("/worker", headers=headers, query_string={"includeDeleted": "true"}),
        api.put(f"/job/{job_id}", 409, headers=headers, json={"state": "done"}),
    ]
    now = service_clock.now_ms()
    seen = set()
    for body in bodies:
        for name, value in _timestamps(body):
            seen.add(name.rsplit(".", 1)[-1])
            if value is not None:
                assert type(value) is int and now - 86_400_000 < value <= now + 1000, (name, value)
    assert {
        "enqueuedTimestamp",
        "startTimestamp",
        "endTimestamp",
        "lastUpdatedTimestamp",
        "abortRequestedTimestamp",
        "timestamp",
        "createdTimestamp",
        "deletedTimestamp",
    } <= seen
