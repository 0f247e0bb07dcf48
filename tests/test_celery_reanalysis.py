"""§11.1 over HTTP with a real Celery worker: reanalysis makes one job however many call at once,
announces it with "reanalysis": true, and shows no other customer's sample."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.live_server import serve
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.test_celery_intake import JOB_TOPIC, records_of

pytestmark = pytest.mark.celery

CALLERS = 20


@pytest.fixture(scope="module")
def url(live_app):
    with serve(live_app) as base_url:
        yield f"{base_url}/sampledb/v2"


def reanalyse(url: str, headers: dict, sha256: str = SAMPLE_SHA256, **query) -> requests.Response:
    return requests.put(f"{url}/sample/{sha256}/reanalyse", headers=headers, params=query, timeout=30)


def test_concurrent_reanalysis_makes_one_job(
    worker, url, make_key, live_api, task_sender, wait_idle, kafka_broker, sql
):
    from celeryconfig import TaskNames

    user = make_key("USER", customer="acme", user="reanalyst")
    analyzer = make_key("ANALYZER", customer="acme", all_customers=True)
    submitted = submission_payload("acme")
    task_sender.send(TaskNames.INGEST_SUBMISSION, submitted)
    wait_idle()
    (first,) = [job["id"] for job in live_api.get("/job", headers=analyzer)["data"]]
    live_api.put(f"/job/{first}", headers=analyzer, json={"state": "done"})

    with ThreadPoolExecutor(CALLERS) as pool:
        answers = list(pool.map(lambda _: reanalyse(url, user), range(CALLERS)))
    assert {a.status_code for a in answers} == {200}
    jobs = {a.json()["data"]["id"] for a in answers}
    assert len(jobs) == 1 and first not in jobs
    (job_id,) = jobs
    assert sql("SELECT count(*) FROM jobs WHERE state IN ('enqueued', 'executing')")[0][0] == 1
    job = live_api.get(f"/job/{job_id}", headers=analyzer)["data"]
    assert job["submission"] == live_api.get(f"/job/{first}", headers=analyzer)["data"]["submission"]

    wait_idle()
    (record,) = records_of(kafka_broker.url, JOB_TOPIC, {job_id}, expect=1)
    message = json.loads(record.value)
    assert message["reanalysis"] is True and message["jobID"] == job_id
    assert message["submission"]["id"] == submitted["submission"]["id"]
    assert message["tasks"] == [{"id": t["id"], "worker": t["worker"]} for t in job["tasks"]]
    assert message["options"] == []
    history = live_api.get(f"/job/{job_id}/history", headers=analyzer)["data"]
    assert history[0]["message"] == f"Job created from reanalysis of submission {submitted['submission']['id']}"

    # Once that job is final, the next call makes a new one; while it is active, calls get it.
    live_api.put(f"/job/{job_id}", headers=analyzer, json={"state": "failed"})
    again = reanalyse(url, user).json()["data"]["id"]
    assert again not in (first, job_id)
    assert reanalyse(url, user).json()["data"]["id"] == again


def test_reanalysis_sees_only_the_keys_customers(worker, url, make_key, make_job, live_api):
    make_job(customer="acme")
    stranger = make_key("USER", customer="globex")
    answer = reanalyse(url, stranger)
    assert answer.status_code == 404 and answer.json()["data"] is None
    assert reanalyse(url, make_key("USER", customer="globex", grant_customers=("acme",))).status_code == 200
    # A key that sees several customers may name one; one it does not see answers 404 too.
    admin = make_key("USER", customer="globex", all_customers=True)
    assert reanalyse(url, admin, customer="globex").status_code == 404
    by_name = reanalyse(url, admin, customer="acme").json()["data"]
    assert by_name["customer"]["shortName"] == "acme"
    assert reanalyse(url, admin, customer=by_name["customer"]["id"]).json()["data"]["id"] == by_name["id"]
    assert reanalyse(url, stranger, "0" * 64).status_code == 404
    bad = reanalyse(url, stranger, "not-a-hash")
    assert bad.status_code == 412 and bad.json()["messages"][0]["field"] == "sha256"
    assert reanalyse(url, make_key("VIEWER", customer="acme")).status_code == 403
