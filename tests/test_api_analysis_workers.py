"""§2 and §5.3 /worker: the registry of analysis workers and which tasks a new job gets."""

from __future__ import annotations

import uuid

import pytest

from app import clock as service_clock
from tests.support.api import BASE, check_envelope

DEFAULT_WORKERS = [
    "document-analyzer",
    "sandbox-android",
    "sandbox-linux",
    "sandbox-macos",
    "sandbox-windows",
    "static-analyzer",
]
WORKER_KEYS = {
    "id",
    "shortName",
    "localizedName",
    "localizedDescription",
    "localizedNames",
    "localizedDescriptions",
    "accepts",
    "schema",
    "flags",
    "createdTimestamp",
    "createdByUser",
    "lastUpdatedTimestamp",
    "lastUpdatedByUser",
    "deletedTimestamp",
    "deletedByUser",
}
RESULT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0}},
    "required": ["score"],
}


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", customer="analysis", user="registrar", all_customers=True)


def worker_body(short_name="yara-scanner", **extra) -> dict:
    return {
        "shortName": short_name,
        "localizedNames": {"english": "YARA scanner", "norwegian": "YARA-skanner"},
        "localizedDescriptions": {"english": "Matches YARA rules"},
        **extra,
    }


def task_workers(api, headers, job_id) -> list[str]:
    return [t["worker"] for t in api.get(f"/job/{job_id}", headers=headers)["data"]["tasks"]]


def test_fresh_installation_registers_the_default_workers(api, analyzer):
    body = api.get("/worker", headers=analyzer)
    assert [w["shortName"] for w in body["data"]] == DEFAULT_WORKERS
    assert (body["count"], body["size"], body["limit"], body["offset"]) == (6, 6, 25, 0)
    by_name = {w["shortName"]: w for w in body["data"]}
    assert by_name["static-analyzer"]["accepts"] == {}
    assert by_name["sandbox-windows"]["accepts"] == {"platform": ["win"]}
    assert by_name["document-analyzer"]["accepts"] == {"superType": ["document"]}
    for worker in body["data"]:
        assert set(worker) == WORKER_KEYS and worker["flags"] == []
        assert worker["localizedName"] == worker["localizedNames"]["english"]
        assert uuid.UUID(worker["id"])


def test_register_a_worker(api, analyzer):
    before = service_clock.now_ms()
    body = api.post(
        "/worker",
        201,
        headers=analyzer,
        json=worker_body(
            schema=RESULT_SCHEMA,
            accepts={"type": ["PE", "ELF"], "superType": ["executable"], "arch": ["x86"], "platform": ["win", "linux"]},
        ),
    )
    worker = body["data"]
    assert set(worker) == WORKER_KEYS
    assert worker["shortName"] == "yara-scanner"
    assert worker["localizedName"] == "YARA scanner" and worker["localizedDescription"] == "Matches YARA rules"
    assert worker["localizedNames"] == {"english": "YARA scanner", "norwegian": "YARA-skanner"}
    assert worker["accepts"] == {
        "type": ["PE", "ELF"],
        "superType": ["executable"],
        "arch": ["x86"],
        "platform": ["win", "linux"],
    }
    assert worker["schema"] == RESULT_SCHEMA
    assert worker["flags"] == [] and worker["deletedTimestamp"] is None and worker["deletedByUser"] is None
    assert before <= worker["createdTimestamp"] == worker["lastUpdatedTimestamp"] <= service_clock.now_ms()
    assert worker["createdByUser"]["shortName"] == "registrar"
    assert api.get(f"/worker/{worker['id']}", headers=analyzer)["data"] == worker
    assert api.get("/worker/yara-scanner", headers=analyzer)["data"] == worker
    assert "yara-scanner" in [w["shortName"] for w in api.get("/worker", headers=analyzer)["data"]]


@pytest.mark.parametrize(
    "short_name", ["", "has space", "slash/name", "ünïcode", "semi;colon", "new\nline", "x" * 256, 5, None]
)
def test_short_name_must_match_the_pattern(api, analyzer, short_name):
    body = api.post("/worker", 412, headers=analyzer, json=worker_body(short_name))
    assert [m["field"] for m in body["messages"]] == ["shortName"]


def test_short_name_allows_letters_digits_and_punctuation_of_the_pattern(api, analyzer):
    name = "Cuckoo_2.0:win-10"
    assert api.post("/worker", 201, headers=analyzer, json=worker_body(name))["data"]["shortName"] == name
    assert api.get(f"/worker/{name}", headers=analyzer)["data"]["shortName"] == name


def test_english_name_and_description_are_required(api, analyzer):
    body = api.post(
        "/worker",
        412,
        headers=analyzer,
        json={"shortName": "x", "localizedNames": {"norwegian": "X"}, "localizedDescriptions": {"english": ""}},
    )
    assert sorted(m["field"] for m in body["messages"]) == ["localizedDescriptions.english", "localizedNames.english"]
    body = api.post("/worker", 412, headers=analyzer, json={"shortName": "x"})
    assert sorted(m["field"] for m in body["messages"]) == ["localizedDescriptions", "localizedNames"]


def test_duplicate_short_name_is_409(api, analyzer):
    api.post("/worker", 201, headers=analyzer, json=worker_body())
    body = api.post("/worker", 409, headers=analyzer, json=worker_body())
    assert "yara-scanner" in body["messages"][0]["message"]
    api.post("/worker", 409, headers=analyzer, json=worker_body("static-analyzer"))
    # Also when the existing one is deleted: a shortName names one worker for good.
    api.delete("/worker/yara-scanner", headers=analyzer)
    api.post("/worker", 409, headers=analyzer, json=worker_body())
    assert api.get("/worker", headers=analyzer, query_string={"includeDeleted": "true"})["count"] == 7


def test_update_a_worker(api, analyzer, make_key, clock):
    created = api.post("/worker", 201, headers=analyzer, json=worker_body())["data"]
    clock.shift(1)  # the update's lastUpdatedTimestamp is later than the creation's
    other = make_key("ANALYZER", user="maintainer")
    updated = api.put(
        "/worker/yara-scanner",
        headers=other,
        json={
            "localizedNames": {"english": "YARA"},
            "localizedDescriptions": {"english": "Rules", "norwegian": "Regler"},
            "schema": RESULT_SCHEMA,
            "accepts": {"platform": ["linux"]},
        },
    )["data"]
    assert updated["id"] == created["id"] and updated["shortName"] == "yara-scanner"
    assert updated["localizedName"] == "YARA" and updated["localizedNames"] == {"english": "YARA"}
    assert updated["localizedDescriptions"] == {"english": "Rules", "norwegian": "Regler"}
    assert updated["schema"] == RESULT_SCHEMA and updated["accepts"] == {"platform": ["linux"]}
    assert updated["lastUpdatedTimestamp"] > created["lastUpdatedTimestamp"]
    assert updated["createdTimestamp"] == created["createdTimestamp"]
    assert updated["lastUpdatedByUser"]["shortName"] == "maintainer"
    assert updated["createdByUser"]["shortName"] == "registrar"
    # Fields left out stay; accepts null accepts everything again.
    again = api.put(f"/worker/{created['id']}", headers=analyzer, json={"accepts": None})["data"]
    assert again["accepts"] == {} and again["localizedName"] == "YARA" and again["schema"] == RESULT_SCHEMA
    assert api.get("/worker/yara-scanner", headers=analyzer)["data"] == again


def test_short_name_cannot_be_changed(api, analyzer):
    body = api.put("/worker/static-analyzer", 412, headers=analyzer, json={"shortName": "renamed"})
    assert [m["field"] for m in body["messages"]] == ["shortName"]


def test_delete_a_worker(api, analyzer, make_job):
    before_job = make_job(platform="win")
    assert task_workers(api, analyzer, before_job) == ["sandbox-windows", "static-analyzer"]
    deleted = api.delete("/worker/sandbox-windows", headers=analyzer)["data"]
    assert deleted["flags"] == ["deleted"] and deleted["deletedTimestamp"] is not None
    assert deleted["deletedByUser"]["shortName"] == "registrar"
    # Deleting again changes nothing.
    assert api.delete("/worker/sandbox-windows", headers=analyzer)["data"] == deleted
    # Still readable by name, hidden from the default list, shown with includeDeleted.
    assert api.get("/worker/sandbox-windows", headers=analyzer)["data"] == deleted
    assert "sandbox-windows" not in [w["shortName"] for w in api.get("/worker", headers=analyzer)["data"]]
    listed = api.get("/worker", headers=analyzer, query_string={"includeDeleted": "true"})
    assert "sandbox-windows" in [w["shortName"] for w in listed["data"]] and listed["count"] == 6
    # New jobs get no task for it; existing tasks stay.
    assert task_workers(api, analyzer, make_job(platform="win")) == ["static-analyzer"]
    assert task_workers(api, analyzer, before_job) == ["sandbox-windows", "static-analyzer"]


def test_result_schema_is_served_raw(client, api, analyzer):
    api.post("/worker", 201, headers=analyzer, json=worker_body(schema=RESULT_SCHEMA))
    response = client.get(f"{BASE}/worker/yara-scanner/schema", headers=analyzer)
    assert response.status_code == 200
    assert response.get_json(force=True) == RESULT_SCHEMA  # the schema itself, no envelope
    assert "json" in response.mimetype
    body = check_envelope(client.get(f"{BASE}/worker/static-analyzer/schema", headers=analyzer), 404)
    assert "schema" in body["messages"][0]["message"]


def test_list_paging_and_sorting(api, analyzer):
    body = api.get("/worker", headers=analyzer, query_string={"limit": 2, "offset": 1, "sortBy": "-shortName"})
    assert [w["shortName"] for w in body["data"]] == ["sandbox-windows", "sandbox-macos"]
    assert (body["count"], body["size"], body["limit"], body["offset"]) == (6, 2, 2, 1)
    api.post("/worker", 201, headers=analyzer, json=worker_body("aaa-newest"))
    body = api.get("/worker", headers=analyzer, query_string={"sortBy": "-createdTimestamp", "limit": 1})
    assert [w["shortName"] for w in body["data"]] == ["aaa-newest"]
    body = api.get("/worker", headers=analyzer, query_string={"limit": 0})
    assert body["size"] == 7
    body = api.get("/worker", 412, headers=analyzer, query_string={"sortBy": "id", "includeDeleted": "maybe"})
    assert sorted(m["field"] for m in body["messages"]) == ["includeDeleted", "sortBy"]


# -- which tasks a job gets ----------------------------------------------------------------------------------


def test_classification_filter_decides_the_tasks(api, analyzer, make_job):
    assert task_workers(api, analyzer, make_job(platform="win")) == ["sandbox-windows", "static-analyzer"]
    assert task_workers(api, analyzer, make_job(platform="linux")) == ["sandbox-linux", "static-analyzer"]
    assert task_workers(api, analyzer, make_job(platform="osx")) == ["sandbox-macos", "static-analyzer"]
    assert task_workers(api, analyzer, make_job(platform="win", super_type="document")) == [
        "document-analyzer",
        "sandbox-windows",
        "static-analyzer",
    ]
    assert task_workers(api, analyzer, make_job(platform="plan9")) == ["static-analyzer"]

    # Every criterion of a filter must accept the sample; within a criterion any value does.
    api.post(
        "/worker",
        201,
        headers=analyzer,
        json=worker_body("elf-x86", accepts={"type": ["ELF"], "arch": ["x86", "x86_64"], "platform": ["linux"]}),
    )
    assert "elf-x86" in task_workers(api, analyzer, make_job(platform="linux", file_type="ELF"))
    assert "elf-x86" not in task_workers(api, analyzer, make_job(platform="linux", file_type="PE"))
    assert "elf-x86" not in task_workers(api, analyzer, make_job(platform="win", file_type="ELF"))
    # An empty list accepts every value of that criterion.
    api.post("/worker", 201, headers=analyzer, json=worker_body("everything", accepts={"platform": []}))
    assert "everything" in task_workers(api, analyzer, make_job(platform="plan9"))


def test_changed_filter_applies_to_new_jobs(api, analyzer, make_job):
    api.put("/worker/sandbox-windows", headers=analyzer, json={"accepts": {"platform": ["win", "plan9"]}})
    assert task_workers(api, analyzer, make_job(platform="plan9")) == ["sandbox-windows", "static-analyzer"]


def test_fallback_worker_when_none_accepts(api, analyzer, make_job):
    api.delete("/worker/static-analyzer", headers=analyzer)
    assert task_workers(api, analyzer, make_job(platform="win")) == ["sandbox-windows"]
    # Nobody accepts plan9 now: the job still gets one task, for the configured fallback worker.
    job_id = make_job(platform="plan9")
    assert task_workers(api, analyzer, job_id) == ["static-analyzer"]
    job = api.get(f"/job/{job_id}", headers=analyzer)["data"]
    assert job["state"] == "enqueued" and job["tasks"][0]["state"] == "enqueued"
