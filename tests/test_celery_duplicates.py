"""§11.3: with SAMPLEDB_DUPLICATE_WINDOW_SECONDS on, a submission of a sample the customer had a job for
within the window makes no job: 220 over REST, `duplicate` on the Celery path; off, both make jobs."""

from __future__ import annotations

import ast
import dataclasses
import re
import uuid

import pytest

from app.factory import create_app
from celeryconfig import TaskNames
from tests.support.api import Api
from tests.support.celery_worker import CeleryWorker
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

OTHER_SHA256 = "ab" * 32


@pytest.fixture(scope="module")
def window_api(worker_settings) -> Api:
    application = create_app(dataclasses.replace(worker_settings, duplicate_window_seconds=3600))
    application.config["TESTING"] = True
    return Api(application.test_client())


@pytest.fixture
def window_worker(worker, tmp_path_factory):
    """A Celery worker with the window on, in place of the session's worker (which comes back after)."""
    worker.stop()
    window = CeleryWorker(
        {**worker.env, "SAMPLEDB_DUPLICATE_WINDOW_SECONDS": "3600"},
        tmp_path_factory.mktemp("celery-window") / "worker.log",
        f"sampledb-window-{uuid.uuid4().hex[:6]}@%h",
    )
    window.start()
    yield window
    window.stop()
    worker.start()


def upload_body(payload: dict) -> dict:
    classification = {k: v for k, v in payload["classification"].items() if k != "sample"}
    return {"submission": {"metaData": payload["submission"]["metaData"]}, "classification": classification}


def test_rest_answers_220_for_a_sample_seen_within_the_window(worker, window_api, live_api, make_key, make_job, sql):
    uploader = make_key("UPLOADER", customer="acme")
    make_job(customer="acme")  # acme's job for the sample, enqueued just now
    body = upload_body(submission_payload())
    seen = window_api.post(f"/sample/{SAMPLE_SHA256.upper()}/submission", 220, headers=uploader, json=body)
    assert seen["data"] == {"sampleSha256": SAMPLE_SHA256} and seen["messages"] == []
    # Another sample, or the same sample at another customer, is new.
    accepted = window_api.post(f"/sample/{OTHER_SHA256}/submission", 202, headers=uploader, json=body)["data"]
    window_api.post(
        f"/sample/{SAMPLE_SHA256}/submission", 202, headers=make_key("UPLOADER", customer="globex"), json=body
    )
    # Once a job is made, a client's retry of that very submission gets its job, not 220.
    wait_for(lambda: sql("SELECT count(*) FROM jobs WHERE id = :j", j=accepted["jobID"])[0][0], 20, "the job")
    retry = window_api.post(
        f"/sample/{OTHER_SHA256}/submission",
        202,
        headers=uploader,
        json={**body, "submission": {**body["submission"], "id": accepted["submission"]["id"]}},
    )
    assert retry["data"]["jobID"] == accepted["jobID"]
    # The window off (the default): the same upload makes a job.
    live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 202, headers=uploader, json=body)
    wait_for(
        lambda: (
            sql(
                "SELECT count(*) FROM jobs WHERE sample_sha256 = :s AND customer_id = "
                "(SELECT id FROM customers WHERE short_name = 'acme')",
                s=SAMPLE_SHA256,
            )[0][0]
            == 2
        ),
        20,
        "the second job of acme's sample",
    )


def outcome(worker: CeleryWorker, task_id: str) -> dict:
    """The return value of a task, as the worker logged it (there is no result backend)."""
    pattern = re.compile(rf"Task \S+\[{task_id}\] succeeded in \S+: (.*)")
    found = wait_for(lambda: pattern.search(worker.output()), 30, f"task {task_id} in the worker log")
    return ast.literal_eval(found.group(1))


def test_celery_path_counts_duplicates(window_worker, task_sender, make_job, sql):
    def send(name: str, argument) -> dict:
        return outcome(window_worker, task_sender.send(name, argument).id)

    make_job(customer="acme")
    repeat = submission_payload("acme")
    assert send(TaskNames.INGEST_SUBMISSION, repeat) == {"duplicate": True, "submissionID": repeat["submission"]["id"]}
    fresh = submission_payload("acme", OTHER_SHA256)
    made = send(TaskNames.INGEST_SUBMISSION, fresh)
    assert made["created"] is True
    # A redelivered submission gets its own job back: it is a repeat, not a duplicate.
    assert send(TaskNames.INGEST_SUBMISSION, fresh) == {"jobID": made["jobID"], "created": False}

    third = "cd" * 32
    batch = [
        submission_payload("globex", third),
        submission_payload("globex", third),
        fresh,
        submission_payload("acme", SAMPLE_SHA256),
        {"broken": True},
    ]
    assert send(TaskNames.INGEST_SUBMISSIONS, batch) == {"created": 1, "existing": 1, "duplicate": 2, "dead": 1}
    # A duplicate is settled, not dead; the invalid one is kept as a dead submission.
    assert sql("SELECT payload, reason FROM dead_submissions") == [({"broken": True}, "invalid")]
    assert sql("SELECT count(*) FROM jobs WHERE sample_sha256 = :s", s=third)[0][0] == 1

    assert sql("SELECT count(*) FROM jobs WHERE sample_sha256 = :s", s=SAMPLE_SHA256)[0][0] == 1


def test_celery_path_without_the_window_makes_every_job(worker, task_sender, wait_idle, make_job, sql):
    make_job(customer="acme")
    task_sender.send(TaskNames.INGEST_SUBMISSION, submission_payload("acme"))
    task_sender.send(TaskNames.INGEST_SUBMISSIONS, [submission_payload("acme"), submission_payload("acme")])
    wait_idle()
    assert sql("SELECT count(*) FROM jobs WHERE sample_sha256 = :s", s=SAMPLE_SHA256)[0][0] == 4
