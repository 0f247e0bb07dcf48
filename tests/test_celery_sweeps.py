"""Abort propagation and the timeout sweeps, run by the real worker and announced on Kafka."""

from __future__ import annotations

import collections
import json

import pytest

from app.clock import now_ms
from app.dev.kafka import read_topic
from app.intake.ingest import job_id_for
from celeryconfig import TaskNames
from tests.support.payloads import submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

ABORT_TOPIC = "Sample.Analysis.Job.Abort.OSL"
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"
HOUR_MS = 3600 * 1000


def _make_jobs(task_sender, wait_idle, sql, n: int) -> list[str]:
    payloads = [submission_payload(customer="acme") for _ in range(n)]
    task_sender.send(TaskNames.INGEST_SUBMISSIONS, payloads)
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    wait_for(
        lambda: sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == n,
        30,
        f"{n} jobs",
    )
    wait_idle()
    return job_ids


def _events(bootstrap: str, job_ids: set[str], to_state: str) -> list[dict]:
    return [
        json.loads(r.value) | {"_eventId": dict(r.headers)["event-id"]}
        for r in read_topic(bootstrap, EVENT_TOPIC, timeout=5)
        if r.key.decode() in job_ids and json.loads(r.value)["toState"] == to_state
    ]


def test_abort_of_an_executing_job_is_propagated(worker, task_sender, wait_idle, live_api, make_key, kafka_broker, sql):
    (job_id,) = _make_jobs(task_sender, wait_idle, sql, 1)
    analyzer = make_key("ANALYZER", customer="acme", all_customers=True)
    user = make_key("USER", customer="acme", user="aborting-alice")
    live_api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    job = live_api.delete(f"/job/{job_id}", headers=user, json={"reason": "wrong sample"})["data"]
    assert job["state"] == "executing" and job["flags"] == ["ABORT_REQUESTED"]

    def abort_message():
        return [r for r in read_topic(kafka_broker.url, ABORT_TOPIC, timeout=2) if r.key == job_id.encode()]

    (record,) = wait_for(abort_message, 30, "the abort request on Kafka", interval=0.2)
    message = json.loads(record.value)
    assert message == {
        "jobID": job_id,
        "sample": {"id": job["analysedSample"]["id"]},
        "state": "executing",
        "requestedTimestamp": job["abortRequestedTimestamp"],
        "requestedByUser": job["abortRequestedByUser"],
        "reason": "wrong sample",
    }
    assert message["requestedByUser"]["shortName"] == "aborting-alice"
    assert dict(record.headers)["event-id"]
    wait_for(lambda: _events(kafka_broker.url, {job_id}, "executing"), 30, "the executing event")


def test_execution_timeout_sweep_run_twice_at_once_times_each_job_out_once(
    worker, task_sender, wait_idle, sql, kafka_broker, live_api, make_key
):
    job_ids = _make_jobs(task_sender, wait_idle, sql, 120)
    fresh = job_ids[100:]  # executing, but heard from recently
    old = now_ms() - 2 * HOUR_MS
    sql(
        "UPDATE jobs SET state = 'executing', start_timestamp = :t, last_updated_timestamp = :t "
        "WHERE id = ANY(CAST(:ids AS uuid[]))",
        t=old,
        ids=job_ids,
    )
    sql("UPDATE jobs SET last_updated_timestamp = :t WHERE id = ANY(CAST(:ids AS uuid[]))", t=now_ms(), ids=fresh)

    # Two sweeps at once, each in batches of 20 (SAMPLEDB_SWEEP_BATCH_SIZE of the test worker).
    task_sender.send_many(TaskNames.SWEEP_EXECUTION_TIMEOUTS, [[], []])
    wait_idle()

    stale = set(job_ids[:100])
    states = dict(sql("SELECT id::text, state FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids))
    assert {states[j] for j in stale} == {"timeout"}
    assert {states[j] for j in fresh} == {"executing"}
    open_tasks = sql(
        "SELECT count(*) FROM job_tasks WHERE job_id = ANY(CAST(:ids AS uuid[])) "
        "AND state IN ('enqueued', 'executing')",
        ids=list(stale),
    )[0][0]
    assert open_tasks == 0
    assert {
        s
        for (s,) in sql(
            "SELECT DISTINCT state FROM job_tasks WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=list(stale)
        )
    } == {"timeout"}
    moves = dict(
        sql(
            "SELECT job_id::text, count(*) FROM job_history WHERE job_id = ANY(CAST(:ids AS uuid[])) "
            "AND task_id IS NULL AND to_state = 'timeout' GROUP BY job_id",
            ids=job_ids,
        )
    )
    assert moves == {j: 1 for j in stale}

    events = wait_for(
        lambda: (e := _events(kafka_broker.url, stale, "timeout")) and len(e) >= 100 and e, 30, "100 timeout events"
    )
    per_job = collections.Counter(e["jobID"] for e in events)
    assert set(per_job) == stale and set(per_job.values()) == {1}
    assert {e["fromState"] for e in events} == {"executing"} and {e["user"] for e in events} == {None}

    viewer = make_key("VIEWER", customer="acme")
    job = live_api.get(f"/job/{job_ids[0]}", headers=viewer)["data"]
    assert job["state"] == "timeout" and job["endTimestamp"] is not None
    assert {t["state"] for t in job["tasks"]} == {"timeout"}


def test_unconfirmed_abort_and_enqueued_timeout_sweeps(
    worker, task_sender, wait_idle, sql, kafka_broker, live_api, make_key
):
    aborting, waiting = _make_jobs(task_sender, wait_idle, sql, 2)
    analyzer = make_key("ANALYZER", customer="acme", all_customers=True)
    live_api.put(f"/job/{aborting}", headers=analyzer, json={"state": "executing"})
    live_api.delete(f"/job/{aborting}", headers=analyzer)
    sql(
        "UPDATE jobs SET abort_requested_timestamp = :t WHERE id = CAST(:id AS uuid)",
        t=now_ms() - 2 * HOUR_MS,
        id=aborting,
    )
    sql("UPDATE jobs SET enqueued_timestamp = :t WHERE id = CAST(:id AS uuid)", t=now_ms() - 48 * HOUR_MS, id=waiting)

    task_sender.send(TaskNames.SWEEP_UNCONFIRMED_ABORTS)
    task_sender.send(TaskNames.SWEEP_ENQUEUED_TIMEOUTS)
    wait_idle()
    states = dict(sql("SELECT id::text, state FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=[aborting, waiting]))
    assert states == {aborting: "aborted", waiting: "timeout"}
    wait_for(lambda: _events(kafka_broker.url, {aborting}, "aborted"), 20, "the aborted event")
    wait_for(lambda: _events(kafka_broker.url, {waiting}, "timeout"), 20, "the timeout event")
