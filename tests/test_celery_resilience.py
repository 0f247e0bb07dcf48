"""Nothing is lost and nothing doubles when Kafka or a worker goes away in the middle of a burst."""

from __future__ import annotations

import collections
import json
import uuid

import pytest
import sqlalchemy as sa

from app.clock import now_ms
from app.dev.kafka import read_topic
from app.dev.processes import log_tail
from app.extensions import db
from app.intake.ingest import job_id_for
from celeryconfig import TaskNames
from tests.support.celery_worker import WORKER_VISIBILITY_TIMEOUT
from tests.support.database import set_read_only
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

JOB_TOPIC = "Sample.Analysis.Job.OSL"


def _creation_rows(sql, job_ids: list[str]) -> list:
    return sql(
        "SELECT key, sent_timestamp, attempts FROM outbox WHERE topic = :t AND key = ANY(:keys)",
        t=JOB_TOPIC,
        keys=job_ids,
    )


def _count_jobs(sql, job_ids: list[str]) -> int:
    return sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0]


def test_kafka_outage_during_ingest_loses_nothing_and_sends_each_message_once(
    worker, task_sender, kafka_broker, sql, wait_idle
):
    if not kafka_broker.restartable:
        pytest.skip("needs the embedded Kafka broker (SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS is set)")
    payloads = [submission_payload(customer=f"outage-{i % 5}") for i in range(500)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]

    # The first 100 go in before the stop and the other 400 during the outage, so the split does not
    # depend on how fast this machine relays (a fast one had sent 439 before a single stop landed).
    task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads[:100]])
    wait_for(
        lambda: sum(1 for r in _creation_rows(sql, job_ids) if r.sent_timestamp) >= 50,
        60,
        "the first creation messages acknowledged",
    )
    kafka_broker.crash()
    task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads[100:]])
    wait_for(lambda: _count_jobs(sql, job_ids) == 500, 90, "500 jobs while Kafka is down")
    # The relay tried during the outage and recorded its failure on the rows it could not send.
    wait_for(lambda: any(r.attempts for r in _creation_rows(sql, job_ids)), 30, "a failed relay attempt")

    restarted_at = now_ms()
    kafka_broker.start()
    wait_idle(timeout=90)  # every row relayed (the test sends beat's safety-net relay while it waits)

    rows = _creation_rows(sql, job_ids)
    assert len(rows) == 500 and all(r.sent_timestamp for r in rows)
    before = {r.key for r in rows if r.sent_timestamp < restarted_at}  # acknowledged by the broker that stopped
    after = {r.key for r in rows if r.sent_timestamp >= restarted_at}
    assert len(before) >= 50 and len(after) >= 400, (len(before), len(after))
    print(f"Kafka outage: {len(before)} creation messages acknowledged before the stop, {len(after)} after the restart")

    # The restarted broker lost what it had: it holds exactly the messages sent after the restart, once each.
    arrived = collections.Counter(
        r.key.decode() for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() in set(job_ids)
    )
    assert set(arrived) == after
    assert max(arrived.values()) == 1, [k for k, n in arrived.items() if n > 1][:5]
    assert len(before) + sum(arrived.values()) == 500


def test_worker_killed_mid_burst_loses_no_submission_and_doubles_no_job(
    worker, task_sender, kafka_broker, sql, wait_idle, broker_queues, app
):
    """SIGKILL the worker (main and pool processes at once) while both pool processes are inside an
    ingest transaction and the rest of the burst waits in Redis.

    The kill lands while the pool is stuck on a table lock the test holds: the worker then holds its
    full prefetch and is not taking a message. (kombu's Redis transport has a sub-millisecond window,
    between Redis handing a message to BRPOP and the worker recording it as unacknowledged, in which
    a SIGKILL loses that one message; the lock keeps the test out of that window, which belongs to
    the transport, not to this service.)
    """
    payloads = [submission_payload(customer=f"crash-{i % 3}") for i in range(300)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
    wait_for(lambda: _count_jobs(sql, job_ids) >= 30, 60, "the burst under way")

    with db.engine_of(app).connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))  # ingest INSERTs now wait
        stuck = {"seen": 0, "unacked": -1}

        def pool_stuck() -> bool:
            unacked = broker_queues.unacked()
            stuck["seen"] = stuck["seen"] + 1 if unacked >= 2 and unacked == stuck["unacked"] else 0
            stuck["unacked"] = unacked
            return stuck["seen"] >= 5

        wait_for(pool_stuck, 30, "both pool processes waiting inside an ingest transaction", interval=0.1)
        worker.kill()
        blocker.rollback()
    made_before_kill = _count_jobs(sql, job_ids)
    assert made_before_kill < 300, "the burst was over before the kill"
    print(f"worker SIGKILLed with {made_before_kill} of 300 jobs made, {stuck['unacked']} messages unacknowledged")

    worker.start()
    # Messages the killed worker held come back after the visibility timeout.
    wait_for(lambda: _count_jobs(sql, job_ids) == 300, WORKER_VISIBILITY_TIMEOUT + 60, "all 300 jobs after restart")
    wait_idle(timeout=WORKER_VISIBILITY_TIMEOUT + 60)

    per_submission = sql(
        "SELECT submission_id, count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY submission_id",
        ids=job_ids,
    )
    assert len(per_submission) == 300 and all(n == 1 for _, n in per_submission)
    assert {str(p["submission"]["id"]) for p in payloads} == {str(s) for s, _ in per_submission}
    creation = _creation_rows(sql, job_ids)
    assert len(creation) == 300 and all(r.sent_timestamp for r in creation)  # one creation message per job
    assert sql("SELECT count(*) FROM job_history WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == 300

    # On Kafka every job is announced; a relay killed between the acknowledgement and its commit may
    # repeat a message, which carries the same event-id so consumers drop it.
    records = [r for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() in set(job_ids)]
    assert {r.key.decode() for r in records} == set(job_ids)
    event_ids = {dict(r.headers)["event-id"] for r in records}
    assert len(event_ids) == 300
    assert {json.loads(r.value)["jobID"] for r in records} == set(job_ids)


def test_a_worker_killed_between_its_commit_and_its_ack_makes_no_second_job_and_no_second_announcement(
    worker, task_sender, kafka_broker, sql, wait_idle, broker_queues, app
):
    """Fault: the worker dies after its ingest transaction committed and before it acknowledged the messages.
    The moment is made certain: the pool waits inside its transaction on a table lock the test holds, the
    worker's main process (which acknowledges) is stopped, the lock is released and the pool commits, then
    every process of the worker is SIGKILLed. The messages come back after the visibility timeout: each
    submission is still one job, one history entry, one creation message, announced once."""
    import psutil

    payloads = [submission_payload(customer=f"commit-ack-{i % 3}") for i in range(60)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    with db.engine_of(app).connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))  # ingest INSERTs now wait
        task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])

        # Every message taken and recorded as unacknowledged before the main process is stopped, so the
        # killed worker held all 60 (workers.redis_transport records a message in the step that pops it).
        def all_taken() -> bool:
            waiting, unacked = broker_queues.counts()
            return waiting == 0 and unacked >= 60

        wait_for(all_taken, 30, "the worker holding all 60 messages", interval=0.05)
        wait_for(
            lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0] >= 1,
            30,
            "an ingest transaction waiting on the lock",
            interval=0.05,
        )
        main = psutil.Process(worker.pid)
        main.suspend()  # it alone acknowledges: from here on nothing is acknowledged
        blocker.rollback()
    try:
        wait_for(lambda: _count_jobs(sql, job_ids) > 0, 30, "the stuck batch committed, unacknowledged")
        committed_unacked = _count_jobs(sql, job_ids)
    finally:
        worker.kill()  # main (stopped) and pool processes, SIGKILL
    print(f"worker SIGKILLed after committing {committed_unacked} jobs it never acknowledged")

    worker.start()
    wait_for(lambda: _count_jobs(sql, job_ids) == 60, WORKER_VISIBILITY_TIMEOUT + 60, "all 60 jobs after restart")
    wait_idle(timeout=WORKER_VISIBILITY_TIMEOUT + 60)
    per_submission = sql(
        "SELECT submission_id, count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY submission_id",
        ids=job_ids,
    )
    assert len(per_submission) == 60 and all(n == 1 for _, n in per_submission)
    creation = _creation_rows(sql, job_ids)
    assert len(creation) == 60 and all(r.sent_timestamp for r in creation)
    assert sql("SELECT count(*) FROM job_history WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == 60
    records = [r for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() in set(job_ids)]
    # One creation message per job: a repeat by a relay killed between Kafka's acknowledgement and its commit
    # carries the same event-id (consumers drop it); a second job would have announced another.
    event_ids_per_job = collections.defaultdict(set)
    for record in records:
        event_ids_per_job[record.key.decode()].add(dict(record.headers)["event-id"])
    assert set(event_ids_per_job) == set(job_ids) and all(len(ids) == 1 for ids in event_ids_per_job.values())


def test_a_database_failed_over_to_read_only_stores_nothing_dead_and_makes_every_job_after(
    worker, celery_worker, task_sender, app, live_app, make_key, sql, wait_idle, database_url
):
    """Fault: the database fails over onto a read-only node mid-traffic. Ingest took class 25 for a permanent
    refusal: it stored good submissions as dead (a write, refused too) and requeued batches at once. Now the
    REST intake answers 503 with Retry-After, the Celery path backs off, and once the database is writable
    again every submission sent meanwhile becomes its job: none dead."""
    uploader = make_key("UPLOADER", customer="acme")
    client = live_app.test_client()
    payloads = [submission_payload(customer=f"read-only-{i % 3}") for i in range(30)]
    rest_body = {"submission": {"id": str(uuid.uuid4())}, "classification": payloads[0]["classification"]}
    log_start = celery_worker.log_path.stat().st_size
    set_read_only(database_url, True, app, live_app)
    try:
        task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
        answer = client.post(f"/sampledb/v2/sample/{SAMPLE_SHA256}/submission", headers=uploader, json=rest_body)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5", answer.get_json()
        wait_for(
            lambda: "ReadOnlySqlTransaction" in log_tail(celery_worker.log_path, log_start, lines=10**6),
            30,
            "the worker meeting the read-only database",
        )
    finally:
        set_read_only(database_url, False, app, live_app)
    answer = client.post(f"/sampledb/v2/sample/{SAMPLE_SHA256}/submission", headers=uploader, json=rest_body)
    assert answer.status_code == 202, answer.get_json()
    wait_idle(timeout=180)
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    wait_for(lambda: _count_jobs(sql, job_ids) == len(payloads), 60, "every job made after the failover")
    assert sql("SELECT count(*) FROM dead_submissions")[0][0] == 0
    rest_job = str(job_id_for(rest_body["submission"]["id"]))
    wait_for(lambda: _count_jobs(sql, [rest_job]) == 1, 60, "the REST submission's job")
