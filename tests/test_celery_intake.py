"""Submission intake through a real Celery worker, Redis and a Kafka-protocol broker."""

from __future__ import annotations

import copy
import json
import re
import time

import pytest

from app.dev.kafka import read_topic
from app.intake.ingest import job_id_for
from celeryconfig import TaskNames
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

JOB_TOPIC = "Sample.Analysis.Job.OSL"
CLASS = {"type": "PE", "superType": "executable", "platform": "win"}
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"


def records_of(bootstrap: str, topic: str, keys: set[str], expect: int, timeout: float = 20) -> list:
    """The records of `topic` keyed by one of `keys`, once at least `expect` of them arrived."""
    found: list = []

    def enough():
        found[:] = [r for r in read_topic(bootstrap, topic, timeout=2) if r.key.decode() in keys]
        return len(found) >= expect

    wait_for(enough, timeout, f"{expect} records on {topic}", interval=0.2)
    return found


def count(sql, statement: str, **params) -> int:
    return sql(statement, **params)[0][0]


def test_rest_submission_makes_a_job_and_announces_it(worker, live_api, make_key, kafka_broker, sql):
    headers = make_key("UPLOADER", customer="acme", user="uploader-kim")
    viewer = make_key("VIEWER", customer="acme")
    seed = submission_payload()
    body = {
        "submission": {
            k: seed["submission"][k] for k in ("name", "timestamp", "mimeType", "metaData", "tlp", "acl", "userAgent")
        },
        "classification": seed["classification"],
    }
    accepted = live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 202, headers=headers, json=body)["data"]
    job_id = accepted["jobID"]

    wait_for(
        lambda: job_id in {j["id"] for j in live_api.get("/job", headers=viewer)["data"]}, 30, "the job in GET /job"
    )
    job = live_api.get(f"/job/{job_id}", headers=viewer)["data"]
    assert job["state"] == "enqueued" and job["customer"]["shortName"] == "acme"
    assert job["submission"] == accepted["submission"]

    (record,) = records_of(kafka_broker.url, JOB_TOPIC, {job_id}, expect=1)
    message = json.loads(record.value.decode("utf-8"))
    submission = {
        **seed["submission"],
        "id": accepted["submission"]["id"],
        "customer": "acme",
        "createdByUser": accepted["submission"]["createdByUser"],
        "createdTimestamp": accepted["submission"]["createdTimestamp"],
    }
    assert message == {
        "jobID": job_id,
        "submission": submission,
        "classification": seed["classification"],
        "tasks": [{"id": t["id"], "worker": t["worker"]} for t in job["tasks"]],
        "options": [],
        "reanalysis": False,
    }
    assert set(message["submission"]) == set(seed["submission"])  # every field of the seed's example
    assert message["submission"]["createdByUser"]["shortName"] == "uploader-kim"
    assert {t["worker"] for t in message["tasks"]} == {"static-analyzer", "sandbox-windows"}
    assert record.key == job_id.encode("utf-8")
    headers_ = dict(record.headers)
    (event_id,) = sql("SELECT event_id FROM outbox WHERE topic = :t AND key = :k", t=JOB_TOPIC, k=job_id)[0]
    assert headers_["event-id"] == str(event_id).encode("ascii")
    # Marked sent once Kafka acknowledged it (the mark commits just after the acknowledgement).
    wait_for(
        lambda: count(sql, "SELECT count(*) FROM outbox WHERE key = :k AND sent_timestamp IS NULL", k=job_id) == 0,
        5,
        "the outbox rows marked sent",
    )

    (event,) = records_of(kafka_broker.url, EVENT_TOPIC, {job_id}, expect=1)
    assert json.loads(event.value)["toState"] == "enqueued" and json.loads(event.value)["fromState"] is None


def _tasks_run(task_sender) -> dict[str, int]:
    """What the test worker has run since it started, by task name (Celery's own `inspect stats`)."""
    stats = task_sender.client.control.inspect(timeout=5).stats() or {}
    totals: dict[str, int] = {}
    for worker_stats in stats.values():
        for name, amount in worker_stats.get("total", {}).items():
            totals[name] = totals.get(name, 0) + amount
    return totals


def test_500_rest_submissions_make_500_jobs_with_far_fewer_ingest_messages(
    worker, live_api, make_key, task_sender, kafka_broker, sql
):
    """SPEC 13.3: a REST submission is one INSERT and its commit; workers are woken per burst, not per
    submission, and make every job once, announced once."""
    headers = make_key("UPLOADER", customer="burst")
    before = _tasks_run(task_sender)
    job_ids = [
        live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 202, headers=headers, json={"classification": CLASS})[
            "data"
        ]["jobID"]
        for _ in range(500)
    ]
    wait_for(
        lambda: (
            count(
                sql, "SELECT count(*) FROM jobs j JOIN customers c ON c.id = j.customer_id WHERE c.short_name = 'burst'"
            )
            == 500
            and count(sql, "SELECT count(*) FROM pending_submissions") == 0
        ),
        120,
        "the 500 jobs made",
    )
    after = _tasks_run(task_sender)
    runs = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert runs.get(TaskNames.INGEST_SUBMISSION, 0) == 0  # no Celery message per REST submission
    assert 1 <= runs.get(TaskNames.INGEST_PENDING, 0) <= 25, runs  # a few wake-ups for the whole burst
    made = sql("SELECT j.id FROM jobs j JOIN customers c ON c.id = j.customer_id WHERE c.short_name = 'burst'")
    assert sorted(str(row.id) for row in made) == sorted(job_ids) and len(set(job_ids)) == 500
    records = records_of(kafka_broker.url, JOB_TOPIC, set(job_ids), expect=500, timeout=60)
    assert sorted(r.key.decode() for r in records) == sorted(job_ids)  # each job announced once


def test_the_same_submission_three_times_makes_one_job(worker, task_sender, wait_idle, kafka_broker, sql):
    payload = submission_payload(customer="triple")
    for _ in range(3):  # the sample service's redelivery
        task_sender.send(TaskNames.INGEST_SUBMISSION, copy.deepcopy(payload))
    wait_idle()
    job_id = str(job_id_for(payload["submission"]["id"]))
    assert count(sql, "SELECT count(*) FROM jobs WHERE submission_id = :s", s=payload["submission"]["id"]) == 1
    assert count(sql, "SELECT count(*) FROM outbox WHERE topic = :t AND key = :k", t=JOB_TOPIC, k=job_id) == 1
    assert count(sql, "SELECT count(*) FROM job_history WHERE job_id = :j", j=job_id) == 1
    records = records_of(kafka_broker.url, JOB_TOPIC, {job_id}, expect=1)
    time.sleep(0.5)  # a second creation message would have been sent with the first
    assert len(records_of(kafka_broker.url, JOB_TOPIC, {job_id}, expect=1)) == len(records) == 1


def test_a_bad_payload_is_stored_dead_not_retried(worker, task_sender, wait_idle, sql):
    good = submission_payload()
    bad = submission_payload()
    bad["submission"]["tlp"] = "purple"
    task_sender.send(TaskNames.INGEST_SUBMISSION, {"not": "a submission"})
    task_sender.send(TaskNames.INGEST_SUBMISSION, bad)
    task_sender.send(TaskNames.INGEST_SUBMISSION, good)
    wait_idle()
    assert count(sql, "SELECT count(*) FROM jobs") == 1
    dead = sql("SELECT submission_id, payload, reason, error, attempts FROM dead_submissions ORDER BY id")
    assert [(str(d.submission_id) if d.submission_id else None, d.reason, d.attempts) for d in dead] == [
        (None, "invalid", 1),
        (bad["submission"]["id"], "invalid", 1),
    ]
    assert [d.payload for d in dead] == [{"not": "a submission"}, bad]
    assert "submission: Missing data for required field." in dead[0].error
    assert dead[1].error.startswith("submission.tlp: Must be one of")
    assert not re.search(r"sampledb\.ingest_submission\[[^]]+\] retry", worker.output())


def test_bulk_ingest(worker, task_sender, wait_idle, kafka_broker, sql):
    payloads = [submission_payload(customer=f"bulk-{i % 4}") for i in range(300)]
    batches = [payloads[i : i + 100] for i in range(0, 300, 100)]
    batches[1] = batches[1] + [copy.deepcopy(payloads[0]), {"broken": True}]  # a repeat and an invalid one
    started = time.monotonic()
    task_sender.send_many(TaskNames.INGEST_SUBMISSIONS, [[batch] for batch in batches])
    task_sender.send(TaskNames.INGEST_SUBMISSIONS, batches[0])  # a redelivered batch
    wait_idle()
    elapsed = time.monotonic() - started
    assert count(sql, "SELECT count(*) FROM jobs") == 300
    assert count(sql, "SELECT count(*) FROM outbox WHERE topic = :t", t=JOB_TOPIC) == 300
    keys = {str(job_id_for(p["submission"]["id"])) for p in payloads}
    records = records_of(kafka_broker.url, JOB_TOPIC, keys, expect=300)
    assert {r.key.decode() for r in records} == keys
    assert sql("SELECT payload, reason FROM dead_submissions") == [({"broken": True}, "invalid")]
    print(f"bulk ingest: 300 jobs made and announced in {elapsed:.2f} s")


def test_a_submission_the_database_refuses_does_not_take_its_batch_down(worker, task_sender, wait_idle, sql):
    payloads = [submission_payload(customer="batch-mates") for _ in range(10)]
    payloads[3]["submission"]["name"] = "poison.exe"
    # Something validation lets through but PostgreSQL refuses, stood in for by a constraint.
    sql("ALTER TABLE jobs ADD CONSTRAINT test_no_poison CHECK (submission->>'name' IS DISTINCT FROM 'poison.exe')")
    try:
        task_sender.send(TaskNames.INGEST_SUBMISSIONS, payloads)
        wait_for(lambda: count(sql, "SELECT count(*) FROM jobs") == 9, 30, "the nine good jobs")
        wait_idle()
    finally:
        sql("ALTER TABLE jobs DROP CONSTRAINT test_no_poison")
    assert count(sql, "SELECT count(*) FROM jobs WHERE submission->>'name' = 'poison.exe'") == 0
    (dead,) = sql("SELECT submission_id, payload, reason, error, attempts FROM dead_submissions")
    assert (str(dead.submission_id), dead.payload, dead.reason, dead.attempts) == (
        payloads[3]["submission"]["id"],
        payloads[3],
        "refused",
        1,
    )
    assert dead.error.startswith("23514: ") and "test_no_poison" in dead.error  # check_violation
