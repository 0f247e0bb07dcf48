"""SPEC 10.2: a submission that cannot be ingested is stored dead with its error and attempts, never
dropped or redelivered forever; `submissions retry` ingests it once the cause is gone; the Celery
path keeps fields the service does not know."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import time

import psutil
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.intake.ingest import job_id_for
from app.task_names import TaskNames
from tests.support.celery_worker import start_own_worker
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

JOB_TOPIC = "Sample.Analysis.Job.OSL"


def _dead(sql) -> list:
    return sql(
        "SELECT id, submission_id, payload, payload_text, reason, error, attempts, first_seen, last_seen "
        "FROM dead_submissions ORDER BY id"
    )


def _jobs(sql, payload) -> int:
    return sql("SELECT count(*) FROM jobs WHERE submission_id = :s", s=payload["submission"]["id"])[0][0]


def test_invalid_submissions_are_stored_dead_as_received(worker, task_sender, wait_idle, sql, run_cli):
    purple = submission_payload(customer="dead-invalid")
    purple["submission"]["tlp"] = "purple"
    nul = submission_payload(customer="dead-invalid")
    nul["submission"]["name"] = "evil\u0000.exe"  # valid JSON, but no PostgreSQL text or JSONB holds it
    for payload in (purple, nul, purple):  # one at a time, so the dead rows are made in this order; purple twice
        task_sender.send(TaskNames.INGEST_SUBMISSION, payload)
        wait_idle()

    first, second = _dead(sql)
    assert (str(first.submission_id), first.reason, first.attempts) == (purple["submission"]["id"], "invalid", 2)
    assert first.payload == purple and first.payload_text is None
    assert first.error.startswith("submission.tlp: Must be one of: white, green, amber, red")
    assert first.first_seen < first.last_seen
    assert (str(second.submission_id), second.reason, second.attempts) == (nul["submission"]["id"], "invalid", 1)
    assert second.payload is None and json.loads(second.payload_text) == nul  # exactly as received
    assert second.error == "submission: Text must not contain NUL characters or unpaired surrogates"
    assert _jobs(sql, purple) == _jobs(sql, nul) == 0

    listed = run_cli("submissions", "dead").output.splitlines()
    assert listed[0] == "2 dead submissions"
    assert f"id={first.id} submission={purple['submission']['id']} reason=invalid attempts=2 " in listed[1]
    assert "error=submission.tlp: Must be one of" in listed[1]

    # Retrying cannot fix an invalid payload: it stays dead and counts the attempt.
    retried = run_cli("submissions", "retry", "--all")
    assert retried.exit_code == 1 and "2 of 2 submissions are still dead" in retried.output
    assert [d.attempts for d in _dead(sql)] == [3, 2]

    # The sender corrects one and sends it again under the same id: it makes its job, and retry clears it.
    purple["submission"]["tlp"] = "amber"
    task_sender.send(TaskNames.INGEST_SUBMISSION, purple)
    wait_idle()
    assert _jobs(sql, purple) == 1
    retried = run_cli("submissions", "retry", "--all")
    assert retried.exit_code == 1 and "1 of 2 submissions are still dead" in retried.output
    assert (
        f"id={first.id} submission={purple['submission']['id']}: job {job_id_for(purple['submission']['id'])}"
        in retried.output
    )
    assert [d.id for d in _dead(sql)] == [second.id]


def _incompressible_name(length: int = 1024) -> str:
    """A customer shortName of 1,024 characters whose 4-byte UTF-8 characters do not compress: too large a key
    for the unique index on customers.short_name (PostgreSQL would refuse it with SQLSTATE 54000)."""
    chooser = random.Random(8)
    return "".join(chr(chooser.randrange(0x10000, 0x10FFFF)) for _ in range(length))


@contextlib.contextmanager
def _postgresql_refuses(sql, name: str):
    """A rule of the database (stood in for by a constraint) that refuses every job of a submission named
    `name`, for good (SQLSTATE 23514), until the block ends."""
    sql(f"ALTER TABLE jobs ADD CONSTRAINT test_refused CHECK (submission->>'name' <> '{name}')")
    try:
        yield
    finally:
        sql("ALTER TABLE jobs DROP CONSTRAINT test_refused")


def test_a_submission_postgresql_refuses_is_stored_dead_not_retried_forever(worker, task_sender, wait_idle, sql):
    refused = submission_payload(customer="dead-refused")
    refused["submission"]["name"] = "refused.exe"
    good = submission_payload(customer="dead-refused-neighbour")
    with _postgresql_refuses(sql, "refused.exe"):
        task_sender.send(TaskNames.INGEST_SUBMISSION, refused)
        task_sender.send(TaskNames.INGEST_SUBMISSION, good)
        wait_idle()

    (dead,) = _dead(sql)
    assert (str(dead.submission_id), dead.reason, dead.attempts, dead.payload) == (
        refused["submission"]["id"],
        "refused",
        1,
        refused,
    )
    assert dead.error.startswith("23514: ") and "test_refused" in dead.error
    assert _jobs(sql, refused) == 0 and _jobs(sql, good) == 1


def test_a_customer_name_too_large_for_its_index_is_refused_up_front_naming_the_field(
    worker, task_sender, wait_idle, sql
):
    """It reached PostgreSQL, which refused it (SQLSTATE 54000, index row size): now validation names it."""
    too_large = submission_payload(customer=_incompressible_name())
    good = submission_payload(customer="too-large-neighbour")
    task_sender.send(TaskNames.INGEST_SUBMISSION, too_large)
    task_sender.send(TaskNames.INGEST_SUBMISSION, good)
    wait_idle()
    (dead,) = _dead(sql)
    assert (str(dead.submission_id), dead.reason) == (too_large["submission"]["id"], "invalid")
    assert dead.error.startswith("submission.customer: At most 2000 bytes of UTF-8")
    assert _jobs(sql, too_large) == 0 and _jobs(sql, good) == 1


def _pool_process_waiting_on(engine: sa.Engine, worker, seen: set[int]) -> psutil.Process | None:
    """A live pool process of the worker (not one returned before) whose database session waits on a lock: told
    by the application_name of its session, so found directly or through PgBouncer alike. A process killed
    before can still have a session waiting (PostgreSQL notices a dead client only when the lock is granted),
    and stays a zombie child until its worker reaps it: `seen` is of processes."""
    with engine.connect() as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalars()
        pids = {int(found[1]) for name in waiting if (found := re.match(r"sampledb-jobs worker (\d+)@", name or ""))}
    for child in psutil.Process(worker.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.pid in pids and child.pid not in seen and child.status() != psutil.STATUS_ZOMBIE:
                seen.add(child.pid)
                return child
    return None


def _kill_each_delivery_until_dead(engine: sa.Engine, worker, sql, seen: set[int]) -> int:
    """SIGKILL every pool process found waiting inside an ingest (on a lock the test holds) until a dead submission
    is stored; the number of kills."""
    kills = 0
    while not _dead(sql):
        process = wait_for(
            lambda: _dead(sql) or _pool_process_waiting_on(engine, worker, seen),
            60,
            f"delivery {kills + 1} inside its ingest",
        )
        if isinstance(process, psutil.Process):
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
    return kills


def test_a_submission_whose_pool_process_dies_at_every_delivery_is_stored_dead(
    worker, task_sender, wait_idle, sql, app, run_cli, kafka_broker
):
    from app.dev.kafka import read_topic

    doomed = submission_payload(customer="doomed-customer")
    # An uncommitted customer of the same name: the ingest's INSERT ... ON CONFLICT waits for this
    # transaction, so each delivery is caught inside its ingest, where the test kills its pool process.
    engine = db.engine_of(app)
    blocker = engine.connect()
    blocker.execute(sa.text("INSERT INTO customers (short_name, name) VALUES ('doomed-customer', 'doomed')"))
    try:
        task_sender.send(TaskNames.INGEST_SUBMISSION, doomed)
        kills = _kill_each_delivery_until_dead(engine, worker, sql, set())
    finally:
        blocker.rollback()
        blocker.close()
    wait_idle()

    (dead,) = _dead(sql)
    assert kills == 5  # SAMPLEDB_INGEST_MAX_DELIVERIES, default 5: the sixth delivery stores it dead
    assert (str(dead.submission_id), dead.reason, dead.attempts, dead.payload) == (
        doomed["submission"]["id"],
        "redelivered",
        5,
        doomed,
    )
    assert dead.error.startswith("delivered 6 times: its Celery worker process died at each of the first 5")
    assert _jobs(sql, doomed) == 0
    assert "exited with 'signal 9 (SIGKILL)'" in worker.output()

    # The cause is gone (nothing kills the worker now): retry makes the job and removes the dead row.
    retried = run_cli("submissions", "retry", str(dead.id))
    job_id = str(job_id_for(doomed["submission"]["id"]))
    assert retried.exit_code == 0 and retried.output.strip() == (
        f"id={dead.id} submission={doomed['submission']['id']}: job {job_id}"
    )
    assert _dead(sql) == [] and _jobs(sql, doomed) == 1
    wait_idle()
    assert [
        r.key.decode() for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() == job_id
    ] == [job_id]
    again = run_cli("submissions", "retry", str(dead.id))
    assert again.exit_code == 1 and f"no dead submission {dead.id}" in again.output


def test_a_refused_submission_is_ingested_by_retry_once_the_database_takes_it(
    worker, task_sender, wait_idle, sql, run_cli
):
    payloads = [submission_payload(customer="retry-later") for _ in range(3)]
    payloads[1]["submission"]["name"] = "quarantined.exe"
    # A rule of the database (stood in for by a constraint) refuses one submission, for a while.
    sql("ALTER TABLE jobs ADD CONSTRAINT test_quarantine CHECK (submission->>'name' <> 'quarantined.exe')")
    try:
        task_sender.send(TaskNames.INGEST_SUBMISSIONS, payloads)
        wait_idle()
        (dead,) = _dead(sql)
        assert (dead.reason, dead.payload) == ("refused", payloads[1])
        assert run_cli("submissions", "retry", "--all").exit_code == 1  # still refused
    finally:
        sql("ALTER TABLE jobs DROP CONSTRAINT test_quarantine")
    assert _dead(sql)[0].attempts == 2
    retried = run_cli("submissions", "retry", "--all")
    assert retried.exit_code == 0, retried.output
    assert _dead(sql) == [] and [_jobs(sql, p) for p in payloads] == [1, 1, 1]


def test_fields_the_service_does_not_know_are_kept_on_the_celery_path(
    worker, task_sender, wait_idle, sql, live_api, make_key, kafka_broker
):
    from app.dev.kafka import read_topic

    payload = submission_payload(customer="upgraded-upstream")
    payload["submission"]["origin"] = {"region": "eu-north", "hops": [1, 2]}
    payload["submission"]["userAgent"]["build"] = "2026.11"
    payload["classification"]["confidence"] = 0.93
    task_sender.send(TaskNames.INGEST_SUBMISSION, payload)
    wait_idle()

    job_id = str(job_id_for(payload["submission"]["id"]))
    viewer = make_key("VIEWER", customer="upgraded-upstream")
    job = live_api.get(f"/job/{job_id}", headers=viewer)["data"]
    assert job["submission"] == payload["submission"] and job["classification"] == payload["classification"]
    (record,) = [r for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() == job_id]
    assert json.loads(record.value)["submission"]["origin"] == {"region": "eu-north", "hops": [1, 2]}
    assert _dead(sql) == []

    # The REST intake stays strict: one 412 FIELD_ERROR per unknown field.
    uploader = make_key("UPLOADER", customer="upgraded-upstream")
    body = {"submission": {"name": "a.exe", "origin": "x"}, "classification": payload["classification"]}
    answer = live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 412, headers=uploader, json=body)
    assert {m["field"] for m in answer["messages"]} == {"submission.origin", "classification.confidence"}


def _pending(sql) -> int:
    return sql("SELECT count(*) FROM pending_submissions")[0][0]


def test_a_rest_submission_postgresql_refuses_is_dead_and_no_longer_pending(worker, live_api, make_key, sql):
    """Fault: a REST submission PostgreSQL refuses for good. It was stored dead, but its pending row stayed:
    deleted in the transaction the refusal rolled back."""
    uploader = make_key("UPLOADER", customer="acme")
    body = {"classification": submission_payload()["classification"]}
    refused = {**body, "submission": {"name": "refused.exe"}}
    good = {**body, "submission": {"name": "good.exe"}}
    with _postgresql_refuses(sql, "refused.exe"):
        refused_id = live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 202, headers=uploader, json=refused)
        good_id = live_api.post(f"/sample/{SAMPLE_SHA256}/submission", 202, headers=uploader, json=good)
        refused_id, good_id = (answer["data"]["submission"]["id"] for answer in (refused_id, good_id))
        wait_for(lambda: len(_dead(sql)) == 1 and _pending(sql) == 0, 30, "the refused submission dead, none pending")
    (dead,) = _dead(sql)
    assert (str(dead.submission_id), dead.reason) == (refused_id, "refused")
    assert sql("SELECT count(*) FROM jobs WHERE submission_id = :s", s=good_id)[0][0] == 1


def _store_pending(sql, payloads: list, attempts: list[int] | None = None) -> None:
    """Pending REST submissions, as the intake commits them before its 202, oldest first (taken before
    `attempts` times each, default none)."""
    for n, payload in enumerate(payloads):
        sql(
            "INSERT INTO pending_submissions (submission_id, customer, payload, received_timestamp, attempts) "
            "VALUES (:s, :c, CAST(:p AS jsonb), :t, :a)",
            s=payload["submission"]["id"],
            c=payload["submission"]["customer"],
            p=json.dumps(payload),
            t=n,
            a=attempts[n] if attempts else 0,
        )


def test_the_safety_net_makes_every_good_pending_submission_despite_a_refused_one(worker, task_sender, wait_idle, sql):
    """Fault: beat's ingest_pending took the oldest pending rows in one transaction and had no one-by-one
    fallback, so one row PostgreSQL refuses failed the whole batch at every run: no REST submission whose task
    was lost became a job. Also: a row whose ingest kept killing its worker is stored dead, not taken forever."""
    refused = submission_payload(customer="pending-refused")
    refused["submission"]["name"] = "refused.exe"
    good = [submission_payload(customer=f"pending-good-{n}") for n in range(3)]
    poison = submission_payload(customer="pending-poison")
    _store_pending(sql, [refused, *good, poison], attempts=[0, 0, 0, 0, 99])
    with _postgresql_refuses(sql, "refused.exe"):
        task_sender.send(TaskNames.INGEST_PENDING)
        wait_idle()
    assert _pending(sql) == 0
    assert all(_jobs(sql, payload) == 1 for payload in good)
    assert {(str(d.submission_id), d.reason) for d in _dead(sql)} == {
        (refused["submission"]["id"], "refused"),
        (poison["submission"]["id"], "redelivered"),
    }
    assert _jobs(sql, refused) == 0 and _jobs(sql, poison) == 0


def test_innocent_batch_mates_of_a_process_killing_submission_become_jobs_once(
    worker, task_sender, wait_idle, sql, app, kafka_broker
):
    """Fault: a pool process SIGKILLed while it ingests a batch holding one culprit and several innocent
    submissions. The batch comes back; each of its messages is then ingested alone, so the innocents become
    jobs (once each, announced once) and only the culprit keeps dying until it is stored dead."""
    from app.dev.kafka import read_topic

    engine = db.engine_of(app)
    plug, culprit = submission_payload(customer="mates-plug"), submission_payload(customer="mates-culprit")
    innocents = [submission_payload(customer=f"mates-innocent-{n}") for n in range(8)]
    plug_blocker, culprit_blocker = engine.connect(), engine.connect()
    # Uncommitted customers of these names: an ingest's INSERT ... ON CONFLICT waits for them.
    plug_blocker.execute(sa.text("INSERT INTO customers (short_name, name) VALUES ('mates-plug', 'plug')"))
    culprit_blocker.execute(sa.text("INSERT INTO customers (short_name, name) VALUES ('mates-culprit', 'c')"))
    try:
        # The plug holds the batch slot, so the culprit and the innocents queue up behind it and are taken as one.
        task_sender.send(TaskNames.INGEST_SUBMISSION, plug)
        wait_for(lambda: _pool_process_waiting_on(engine, worker, set()), 60, "the plug inside its ingest")
        task_sender.send_many(TaskNames.INGEST_SUBMISSION, [[culprit], *([p] for p in innocents)])
        wait_for(lambda: len(innocents) + 1 <= _unacked(worker), 30, "the culprit and the innocents prefetched")
        plug_blocker.rollback()
        _kill_each_delivery_until_dead(engine, worker, sql, set())
    finally:
        plug_blocker.close()
        culprit_blocker.rollback()
        culprit_blocker.close()
    wait_idle()

    assert re.search(rf"batch of {len(innocents) + 1} {TaskNames.INGEST_SUBMISSION} messages failed", worker.output())
    assert [(str(d.submission_id), d.reason) for d in _dead(sql)] == [(culprit["submission"]["id"], "redelivered")]
    assert [_jobs(sql, p) for p in [plug, *innocents]] == [1] * (len(innocents) + 1)
    job_ids = {str(job_id_for(p["submission"]["id"])) for p in innocents}
    creation = [r for r in read_topic(kafka_broker.url, JOB_TOPIC, timeout=10) if r.key.decode() in job_ids]
    assert sorted(r.key.decode() for r in {dict(r.headers)["event-id"]: r for r in creation}.values()) == sorted(
        job_ids
    )


def test_batch_mates_of_a_pending_submission_that_kills_its_drain_become_jobs_once(app, sql, tmp_path, request):
    """Fault: a drain of the pending REST submissions SIGKILLed after its claim committed and before its batch
    did (a worker host that died mid-batch), again and again: the batch holds one culprit and four innocent
    submissions. Before, the safety net took the same batch whole each time, so after
    SAMPLEDB_INGEST_MAX_DELIVERIES deaths every row of it was stored dead. Now the claim runs out (2 s here),
    each row taken before is made alone: the innocents become jobs once each, and only the culprit keeps
    dying until it is stored dead."""
    worker, sender = start_own_worker(
        request.getfixturevalue("database_url"),
        request.getfixturevalue("redis_url"),
        request.getfixturevalue("kafka_broker").url,
        tmp_path,
        "claims",
        SAMPLEDB_PENDING_CLAIM_SECONDS="2",
        SAMPLEDB_INGEST_MAX_DELIVERIES="3",
        SAMPLEDB_WORKER_LOCK_TIMEOUT_MS="60000",  # the ingest waits on the test's lock rather than retrying
    )
    engine = db.engine_of(app)
    culprit = submission_payload(customer="claim-culprit")
    innocents = [submission_payload(customer="claim-innocent") for _ in range(4)]
    _store_pending(sql, [innocents[0], culprit, *innocents[1:]])
    blocker = engine.connect()
    # An uncommitted customer of the culprit's name: every ingest holding the culprit waits inside its transaction.
    blocker.execute(sa.text("INSERT INTO customers (short_name, name) VALUES ('claim-culprit', 'c')"))
    beating = [True]

    def beat() -> None:  # beat's safety net, every second
        while beating[0]:
            sender.send(TaskNames.INGEST_PENDING)
            time.sleep(1)

    import threading

    beat_thread = threading.Thread(target=beat, daemon=True)
    try:
        sender.send(TaskNames.INGEST_PENDING, triggered=True)  # the REST intake's wake-up
        wait_for(lambda: _pool_process_waiting_on(engine, worker, set()), 60, "the drain inside its batch")
        claimed = sql("SELECT attempts, claimed_until_timestamp IS NOT NULL FROM pending_submissions")
        assert sorted(claimed) == [(1, True)] * 5  # the whole batch claimed, its claim committed
        beat_thread.start()
        kills = _kill_each_delivery_until_dead(engine, worker, sql, set())
    finally:
        beating[0] = False
        blocker.rollback()
        blocker.close()
    try:
        wait_for(lambda: _pending(sql) == 0, 30, f"nothing pending; worker log:\n{worker.tail(40)}")
        assert kills == 3  # the batch's death, then the culprit's alone until its fourth claim stores it dead
        assert [(str(d.submission_id), d.reason) for d in _dead(sql)] == [(culprit["submission"]["id"], "redelivered")]
        assert [_jobs(sql, p) for p in innocents] == [1, 1, 1, 1] and _jobs(sql, culprit) == 0
        creation = sql(
            "SELECT key FROM outbox WHERE topic = :t AND key = ANY(:keys)",
            t=JOB_TOPIC,
            keys=[str(job_id_for(p["submission"]["id"])) for p in innocents],
        )
        assert len(creation) == 4  # each innocent announced once
    finally:
        worker.stop()


def _unacked(worker) -> int:
    from tests.support.brokers import BrokerQueues

    return BrokerQueues(worker.env["SAMPLEDB_CELERY_BROKER_URL"]).unacked()


@pytest.fixture
def impatient_worker(database_url, redis_url, kafka_broker, tmp_path):
    """A worker on a Redis database of its own whose visibility timeout (3 s) is far shorter than the time its
    messages wait, and that stores a submission dead at its second delivery."""
    worker, sender = start_own_worker(
        database_url,
        redis_url,
        kafka_broker.url,
        tmp_path,
        "impatient",
        SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS="3",
        SAMPLEDB_INGEST_MAX_DELIVERIES="1",
        SAMPLEDB_WORKER_LOCK_TIMEOUT_MS="60000",  # the batch waits on the test's lock rather than retrying
    )
    yield worker, sender
    worker.stop()


def test_messages_redelivered_after_the_visibility_timeout_without_running_are_not_failed_deliveries(
    impatient_worker, app, sql
):
    """Fault: a backlog outlives Redis' visibility timeout. The first batch waits inside its transaction on a table
    lock the test holds for 15 s (five visibility timeouts), while the other messages wait in the worker, taken and
    not started: Redis hands every one of them back, again and again, and the worker takes the copies too. A
    delivery is counted only when its work starts, and a copy runs after its original finished (its count gone),
    so even with SAMPLEDB_INGEST_MAX_DELIVERIES=1 no submission is stored dead: each is one job, announced once."""
    worker, sender = impatient_worker
    payloads = [submission_payload(customer=f"backlog-{i % 2}") for i in range(20)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    with db.engine_of(app).connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))  # ingest INSERTs now wait
        sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
        wait_for(
            lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0] >= 1,
            30,
            "the first batch waiting on the lock",
        )
        time.sleep(15)
        blocker.rollback()

    def ingested() -> bool:
        return sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == 20

    wait_for(ingested, 60, f"20 jobs; worker log:\n{worker.tail(40)}")
    # Redis handed the waiting messages back and the worker ran the copies too (each a duplicate of its job).
    wait_for(lambda: worker.output().count("sampledb.ingest_submission[") > 40, 60, "the copies run")
    succeeded = worker.output().count("succeeded in")
    assert _dead(sql) == []
    per_submission = sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY submission_id", ids=job_ids
    )
    assert len(per_submission) == 20 and {n for (n,) in per_submission} == {1}
    creation = sql("SELECT count(*) FROM outbox WHERE topic = :t AND key = ANY(:keys)", t=JOB_TOPIC, keys=job_ids)
    assert creation[0][0] == 20
    print(f"{succeeded} ingest deliveries succeeded for 20 submissions held 15 s past a 3 s visibility timeout")
