"""SPEC 10.1: one job's messages reach Kafka in the order written, across an outage and back-off;
a message the broker will not take is parked, its job waits, every other job flows."""

from __future__ import annotations

import collections
import json
import uuid

import pytest

from app.dev.kafka import read_topic
from app.intake.ingest import job_id_for
from app.task_names import TaskNames
from tests.support.celery_worker import CeleryWorker
from tests.support.payloads import submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

JOB_TOPIC = "Sample.Analysis.Job.OSL"
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"


@pytest.fixture
def worker_with(worker, tmp_path):
    """worker_with(**env) -> the Celery worker now running: one with these settings changed in place of
    the session's, or (no settings) the session's again. The session's runs again after the test."""
    started: list[CeleryWorker] = []

    def start(**env: str) -> CeleryWorker:
        for running in (worker, *started):
            running.stop()
        if not env:
            worker.start()
            return worker
        replacement = CeleryWorker(
            {**worker.env, **env}, tmp_path / "worker.log", f"sampledb-test-{uuid.uuid4().hex[:6]}@%h"
        )
        started.append(replacement)
        replacement.start()
        return replacement

    yield start
    for replacement in started:
        replacement.stop()


def _ingest(task_sender, sql, payloads: list[dict]) -> list[str]:
    task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    wait_for(
        lambda: (
            sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == len(job_ids)
        ),
        90,
        f"{len(job_ids)} jobs",
    )
    return job_ids


def _drive(live_api, analyzer, job_id: str, *states: str) -> None:
    for state in states:
        live_api.put(f"/job/{job_id}", headers=analyzer, json={"state": state})


def _on_kafka(bootstrap: str, job_ids: set[str]) -> dict[str, dict[str, list]]:
    """{job id: {topic: [records in offset order]}} (one key lives on one partition of a topic)."""
    found: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for topic in (JOB_TOPIC, EVENT_TOPIC):
        for record in read_topic(bootstrap, topic, timeout=10):
            if record.key.decode() in job_ids:
                found[record.key.decode()][topic].append(record)
    return found


def _assert_in_history_order(live_api, analyzer, job_id: str, records: dict[str, list]) -> None:
    """The consumer sees the creation message, then every job state change in the history's order."""
    history = live_api.get(f"/job/{job_id}/history", headers=analyzer)["data"]
    moves = [(e["fromState"], e["toState"]) for e in history if e["taskID"] is None]
    (creation,) = records[JOB_TOPIC]
    events = records[EVENT_TOPIC]
    assert json.loads(creation.value)["jobID"] == job_id
    assert [(json.loads(r.value)["fromState"], json.loads(r.value)["toState"]) for r in events] == moves
    # Across topics the producer's timestamps tell: creation was sent before the first event.
    assert creation.timestamp <= events[0].timestamp


def _outbox_by_key(sql, job_ids: list[str]) -> dict[str, list]:
    rows = sql(
        "SELECT id, key, topic, sent_timestamp, parked_timestamp, attempts, last_error FROM outbox "
        "WHERE key = ANY(:keys) ORDER BY id",
        keys=job_ids,
    )
    grouped: dict[str, list] = collections.defaultdict(list)
    for row in rows:
        grouped[row.key].append(row)
    return grouped


def test_every_jobs_messages_arrive_in_history_order_after_an_outage(
    worker, task_sender, live_api, make_key, kafka_broker, sql, wait_idle
):
    if not kafka_broker.restartable:
        pytest.skip("needs the embedded Kafka broker (SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS is set)")
    analyzer = make_key("ANALYZER", user="analyzer", all_customers=True)
    kafka_broker.crash()
    job_ids = _ingest(task_sender, sql, [submission_payload(customer=f"order-{i % 4}") for i in range(100)])
    for job_id in job_ids:
        _drive(live_api, analyzer, job_id, "executing")
    # The relay keeps trying while the broker is away: the rows it tried back off.
    wait_for(
        lambda: sql("SELECT count(*) FROM outbox WHERE key = ANY(:k) AND attempts > 0", k=job_ids)[0][0] >= 100,
        60,
        "failed relay attempts during the outage",
    )
    for job_id in job_ids:
        _drive(live_api, analyzer, job_id, "done")

    kafka_broker.start()
    wait_idle(timeout=120)

    outbox = _outbox_by_key(sql, job_ids)
    assert all(len(rows) == 4 and all(r.sent_timestamp for r in rows) for rows in outbox.values())
    for rows in outbox.values():  # each row sent only after the one before it was acknowledged
        assert [r.sent_timestamp for r in rows] == sorted(r.sent_timestamp for r in rows)
    on_kafka = _on_kafka(kafka_broker.url, set(job_ids))
    assert set(on_kafka) == set(job_ids)
    for job_id in job_ids:
        _assert_in_history_order(live_api, analyzer, job_id, on_kafka[job_id])
    print(
        f"after the outage: {sum(r.attempts for rows in outbox.values() for r in rows)} failed sends, "
        f"every job's 4 messages in order"
    )


def test_a_message_too_large_is_parked_its_job_waits_and_the_rest_flows(
    worker_with, task_sender, live_api, make_key, kafka_broker, sql, wait_idle, broker_queues, run_cli, worker
):
    # The producer refuses records above its max request size: lower it for this worker.
    analyzer = make_key("ANALYZER", user="analyzer", all_customers=True)
    worker_with(SAMPLEDB_KAFKA_MAX_REQUEST_BYTES="16384")
    big = submission_payload(customer="big")
    big["submission"]["metaData"] = {"strings": "x" * 40_000}  # the creation message carries it
    (big_job,) = _ingest(task_sender, sql, [big])
    _drive(live_api, analyzer, big_job, "executing")
    others = _ingest(task_sender, sql, [submission_payload(customer=f"flow-{i % 4}") for i in range(100)])
    for job_id in others[:10]:
        _drive(live_api, analyzer, job_id, "executing")

    def settled() -> bool:
        if not broker_queues.idle():
            return False
        waiting = sql("SELECT key FROM outbox WHERE sent_timestamp IS NULL")
        parked = sql("SELECT count(*) FROM outbox WHERE parked_timestamp IS NOT NULL")[0][0]
        return parked == 1 and {r.key for r in waiting} == {big_job}

    wait_for(settled, 90, "the other jobs relayed and the big message parked", interval=0.2)
    creation, enqueued, executing = _outbox_by_key(sql, [big_job])[big_job]
    assert creation.topic == JOB_TOPIC and creation.parked_timestamp and creation.attempts == 1
    assert "MessageSizeTooLargeError" in creation.last_error
    # The later rows of its job wait behind it: never tried, not parked themselves.
    assert [(r.sent_timestamp, r.parked_timestamp, r.attempts) for r in (enqueued, executing)] == [(None, None, 0)] * 2
    on_kafka = _on_kafka(kafka_broker.url, {big_job, *others})
    assert big_job not in on_kafka and set(on_kafka) == set(others)

    listed = run_cli("outbox", "parked")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0] == "1 parked outbox messages"
    line = listed.output.splitlines()[1]
    for part in (
        f"id={creation.id} ",
        f"key={big_job} ",
        f"topic={JOB_TOPIC} ",
        "attempts=1 ",
        "created=20",
        "MessageSizeTooLargeError",
    ):
        assert part in line, line

    # Raise the limit again (the session's worker has the default), then put the message back in line.
    worker_with()
    released = run_cli("outbox", "retry", "--all")
    assert released.exit_code == 0 and released.output.strip() == f"1 outbox messages back in line: {creation.id}"
    wait_idle(timeout=60)
    rows = _outbox_by_key(sql, [big_job])[big_job]
    assert all(r.sent_timestamp and r.parked_timestamp is None for r in rows)
    assert [r.sent_timestamp for r in rows] == sorted(r.sent_timestamp for r in rows)
    _assert_in_history_order(live_api, analyzer, big_job, _on_kafka(kafka_broker.url, {big_job})[big_job])
    assert run_cli("outbox", "parked").output.strip() == "0 parked outbox messages"


def test_outbox_retry_names_one_id_or_all(run_cli):
    assert run_cli("outbox", "retry").exit_code == 2
    assert run_cli("outbox", "retry", "7", "--all").exit_code == 2
    missing = run_cli("outbox", "retry", "7")
    assert missing.exit_code == 1 and "no parked outbox message 7" in missing.output


def test_kafka_errors_sorted_into_permanent_and_retriable():
    import kafka.errors as errors

    from workers.relay import is_permanent

    permanent = [
        errors.MessageSizeTooLargeError(),
        errors.RecordListTooLargeError(),
        errors.TopicAuthorizationFailedError(),
        errors.InvalidTopicError(),
        ValueError("bad topic name"),
    ]
    retriable = [
        errors.KafkaTimeoutError(),
        errors.NotLeaderForPartitionError(),
        errors.KafkaConnectionError(),
        errors.RequestTimedOutError(),
        errors.UnknownTopicOrPartitionError(),
        errors.NotEnoughReplicasError(),
        errors.OutOfOrderSequenceNumberError(),
        ConnectionResetError(),
    ]
    assert all(is_permanent(e) for e in permanent)
    assert not any(is_permanent(e) for e in retriable)
    # kafka-python's own verdict agrees for its errors, except producer-state ones a fresh producer fixes.
    assert not any(getattr(e, "retriable", False) for e in permanent)
    assert all(e.retriable for e in retriable[:6])
