"""§10.3 and §10.4 on a stack of its own: PostgreSQL stopped, locked and paused under load; Redis and the
worker SIGKILLed right after a burst of 202s. The API answers 2xx or 503, never 500, and nothing is lost.

The module runs its own PostgreSQL and Redis (the faults would break the session's), a Celery worker,
beat and the API under gunicorn, all as subprocesses; Kafka is the session's broker.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from app.dev import commands
from app.dev.kafka import read_topic
from app.dev.postgres import start_postgres
from app.dev.processes import Child, free_port
from app.dev.redis import start_redis
from app.intake.ingest import job_id_for
from app.operations.migrate import upgrade
from app.task_names import TaskNames
from tests.support.celery_worker import CeleryWorker, TaskSender
from tests.support.payloads import submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

ROOT = Path(__file__).resolve().parents[1]
JOB_TOPIC = "Sample.Analysis.Job.OSL"
API_PATH = "/sampledb/v2"


@dataclass
class Answer:
    phase: str
    what: str
    status: int
    retry_after: str | None
    body: dict | None


class Service(Child):
    """A service subprocess of the stack (gunicorn, beat) that can be stopped and started again."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        super().__init__(name, log_path)
        self.argv, self.env = argv, env

    def start(self) -> Service:
        return super().start(self.argv, env=self.env, cwd=ROOT)


def _log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


@dataclass
class Stack:
    dir: Path
    env: dict
    postgres: object
    redis: object
    worker: CeleryWorker
    beat: Service
    api: Service
    api_url: str
    key: str = ""
    engine: sa.Engine | None = None

    def call(self, method: str, path: str, body: dict | None = None, key: str | None = None) -> tuple:
        request = urllib.request.Request(
            f"{self.api_url}{API_PATH}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Argus-API-Key": key or self.key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers.get("Retry-After"), json.loads(response.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"raw": raw[:300].decode("utf-8", "replace")}
            return err.code, err.headers.get("Retry-After"), body

    def count(self, statement: str, **params) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(sa.text(statement), params)

    def restart_postgres(self) -> None:
        self.postgres = start_postgres(self.dir / "postgres", port=self.postgres.port)

    def postgres_processes(self) -> list[psutil.Process]:
        main = psutil.Process(self.postgres.process.pid)
        return [main, *main.children(recursive=True)]


def _key(env: dict) -> str:
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "keys",
            "create",
            "--user",
            "outage-analyzer",
            "--customer",
            "mnemonic",
            "--role",
            "SAMPLEDB-ANALYZER",
            "--all-customers",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(kafka_broker):
    if not kafka_broker.restartable:
        pytest.skip("needs the embedded servers (SAMPLEDB_* URLs are set)")
    # Not under pytest's tmp dir (0700): the embedded PostgreSQL runs as another user and must reach it.
    directory = Path(tempfile.mkdtemp(prefix="sampledb-test-outages-"))
    postgres = start_postgres(directory / "postgres")
    redis = start_redis(directory / "redis-1")
    upgrade(postgres.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_", "FLOWER_"))}
    env.update(
        SAMPLEDB_DATABASE_URL=postgres.url,
        SAMPLEDB_REDIS_URL=redis.url,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=kafka_broker.url,
        SAMPLEDB_SITE="OSL",
        PYTHONUNBUFFERED="1",
        # Limits lowered so that a held lock turns into timeouts within the test's few seconds.
        SAMPLEDB_API_STATEMENT_TIMEOUT_MS="1000",
        SAMPLEDB_API_LOCK_TIMEOUT_MS="300",
        SAMPLEDB_WORKER_STATEMENT_TIMEOUT_MS="2000",
        SAMPLEDB_WORKER_LOCK_TIMEOUT_MS="500",
        SAMPLEDB_DATABASE_CONNECT_TIMEOUT_SECONDS="2",
        SAMPLEDB_TASK_SOFT_TIME_LIMIT_SECONDS="4",
        SAMPLEDB_TASK_TIME_LIMIT_SECONDS="7",
        SAMPLEDB_PENDING_INGEST_INTERVAL_SECONDS="1",
        SAMPLEDB_OUTBOX_RELAY_INTERVAL_SECONDS="1",
        SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS="12",
        SAMPLEDB_API_KEY_CACHE_SECONDS="60",
    )
    port = free_port()
    worker = CeleryWorker(env, directory / "worker.log", f"sampledb-outages-{uuid.uuid4().hex[:6]}@%h")
    beat = Service(
        "beat",
        commands.celery("beat", "-l", "info", "--schedule", str(directory / "celerybeat-schedule")),
        env,
        directory / "beat.log",
    )
    api = Service(
        "gunicorn", commands.gunicorn("app.factory:create_app()", f"127.0.0.1:{port}"), env, directory / "api.log"
    )
    built = Stack(directory, env, postgres, redis, worker, beat, api, f"http://127.0.0.1:{port}")
    built.engine = sa.create_engine(postgres.url, poolclass=sa.pool.NullPool)
    try:
        built.key = _key(env)
        worker.start()
        beat.start()
        api.start()
        api.wait_until(lambda left: commands.answers(f"{built.api_url}{API_PATH}/healthz"), 60, "answering")
        yield built
    finally:
        for process in (api, beat):
            process.stop()
        worker.stop()
        built.engine.dispose()
        built.redis.stop()
        built.postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_jobs(stack: Stack, job_ids: list[str], timeout: float) -> None:
    def progress() -> tuple[int, int]:
        made = stack.count("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)
        return made, stack.count("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL")

    deadline = time.monotonic() + timeout
    while progress() != (len(job_ids), 0):
        if time.monotonic() > deadline:
            made, unsent = progress()
            pytest.fail(
                f"{made} of {len(job_ids)} jobs made, {unsent} messages unsent after {timeout} s; "
                f"worker log:\n{stack.worker.tail(40)}"
            )
        time.sleep(0.5)


def _announcements(kafka_url: str, job_ids: list[str]) -> dict[str, set[str]]:
    """The event ids of the creation messages on Kafka, by job id."""
    wanted = set(job_ids)
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for record in read_topic(kafka_url, JOB_TOPIC, timeout=10):
        if record.key.decode() in wanted:
            seen[record.key.decode()].add(dict(record.headers)["event-id"].decode())
    return seen


def test_database_outage_and_stall_answer_503_never_500_and_lose_nothing(stack, kafka_broker):
    answers: list[Answer] = []
    phase = ["before"]
    stop = threading.Event()
    rest = [submission_payload(customer=f"outage-{i % 3}") for i in range(150)]
    celery_path = [submission_payload(customer=f"outage-{i % 3}") for i in range(150)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in rest + celery_path]
    known = job_ids[0]

    def record(what: str, status: int, retry_after, body) -> None:
        answers.append(Answer(phase[0], what, status, retry_after, body))

    def read_traffic() -> None:
        while not stop.is_set():
            for what, path in (("list", "/job?limit=5"), ("get", f"/job/{known}"), ("workers", "/worker")):
                record(what, *stack.call("GET", path))
            time.sleep(0.05)

    def submit_over_rest() -> None:
        for payload in rest:
            body = {
                "submission": {"id": payload["submission"]["id"], "customer": payload["submission"]["customer"]},
                "classification": payload["classification"],
            }
            sha256 = payload["submission"]["sample"]["id"]
            while True:  # a client retries a 503 with the same submission id
                status, retry_after, answer = stack.call("POST", f"/sample/{sha256}/submission", body)
                record("submit", status, retry_after, answer)
                if status == 202:
                    assert answer["data"]["jobID"] == str(job_id_for(payload["submission"]["id"]))
                    break
                time.sleep(0.2)
            time.sleep(0.05)

    def submit_over_celery() -> None:
        sender = TaskSender(stack.env["SAMPLEDB_REDIS_URL"])
        for payload in celery_path:
            sender.send(TaskNames.INGEST_SUBMISSION, payload)
            time.sleep(0.12)

    # The first job exists before the traffic starts, so that reads of it are 200 until the faults.
    first = rest.pop(0)
    status, _, _ = stack.call(
        "POST",
        f"/sample/{first['submission']['sample']['id']}/submission",
        {
            "submission": {"id": first["submission"]["id"], "customer": first["submission"]["customer"]},
            "classification": first["classification"],
        },
    )
    assert status == 202
    wait_for(lambda: stack.call("GET", f"/job/{known}")[0] == 200, 30, "the first job")

    threads = [threading.Thread(target=t, daemon=True) for t in (read_traffic, submit_over_rest, submit_over_celery)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        phase[0] = "outage"  # PostgreSQL stopped
        stack.postgres.stop()
        time.sleep(6)
        stack.restart_postgres()
        phase[0] = "recovered"
        wait_for(
            lambda: any(a.phase == "recovered" and a.status == 200 for a in answers[-50:]),
            60,
            "the API working again without a restart",
        )

        phase[0] = "stall"  # a lock held by another connection: statements time out
        with stack.engine.connect() as blocker:
            blocker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            time.sleep(5)
            blocker.rollback()
        phase[0] = "unlocked"
        time.sleep(2)

        phase[0] = "paused"  # every PostgreSQL process stopped with SIGSTOP, then resumed
        paused = stack.postgres_processes()
        for process in paused:
            process.suspend()
        time.sleep(5)
        for process in reversed(paused):
            process.resume()
        phase[0] = "after"
        threads[1].join(timeout=240)
        threads[2].join(timeout=60)
        assert not threads[1].is_alive() and not threads[2].is_alive(), "the submissions did not all get through"
        time.sleep(2)
    finally:
        stop.set()
        threads[0].join(timeout=60)

    statuses = collections.Counter((a.phase, a.status) for a in answers)
    print("answers by phase and status:", dict(sorted(statuses.items())))
    wrong = [(a.phase, a.what, a.status, a.body) for a in answers if not (200 <= a.status < 300 or a.status == 503)]
    assert wrong == [], (wrong[:5], stack.api.tail(80))  # the API log says where a 500 came from
    unavailable = [a for a in answers if a.status == 503]
    for answer in unavailable:
        assert answer.retry_after and int(answer.retry_after) > 0
        assert answer.body["responseCode"] == 503 and answer.body["data"] is None
        assert [m["type"] for m in answer.body["messages"]] == ["ACTION_ERROR"]
    assert statuses[("outage", 503)] > 0 and statuses[("stall", 503)] > 0, statuses
    assert statuses[("after", 200)] > 0 and all(a.status < 300 for a in answers[-10:]), answers[-10:]

    _wait_for_jobs(stack, job_ids, timeout=240)
    assert stack.count("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids) == 300
    assert stack.count("SELECT count(*) FROM pending_submissions") == 0
    announced = _announcements(kafka_broker.url, job_ids)
    assert set(announced) == set(job_ids)
    assert [job for job, events in announced.items() if len(events) != 1] == []


def test_an_ingest_that_outlives_its_time_limit_on_a_hung_database_is_retried_not_lost(stack, kafka_broker):
    """PostgreSQL paused (SIGSTOP) under a burst of ingests for longer than the tasks' time limits (lowered
    to 4 s soft, 7 s hard): no server-side timeout can fire, the tasks hang until their limits stop them,
    and every submission still becomes a job once the database resumes."""
    payloads = [submission_payload(customer=f"hung-{i % 2}") for i in range(40)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    sender = TaskSender(stack.env["SAMPLEDB_REDIS_URL"])
    # The pool processes hold connections (as a running worker does), and beat is stopped so that the
    # first tasks to hang are these ingests, not its relay.
    sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads[:10]])
    _wait_for_jobs(stack, job_ids[:10], timeout=60)
    stack.beat.stop()
    log_offset = stack.worker.log_path.stat().st_size
    paused = stack.postgres_processes()
    for process in paused:
        process.suspend()
    try:
        sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads[10:]])
        wait_for(
            lambda: f"exceeded for {TaskNames.INGEST_SUBMISSION}[" in _log_since(stack.worker.log_path, log_offset),
            60,
            "an ingest stopped by its time limit while the database hangs",
        )
        time.sleep(8)  # past the hard limit too
    finally:
        for process in reversed(paused):
            process.resume()
        stack.beat.start()
    _wait_for_jobs(stack, job_ids, timeout=180)
    failed = [
        line
        for line in _log_since(stack.worker.log_path, log_offset).splitlines()
        if "raised unexpected" in line and TaskNames.INGEST_SUBMISSION in line
    ]
    assert failed == []  # retried, never failed (a failed task is acknowledged: its submission gone)
    print(
        "time limits seen:",
        sorted(
            {
                line.split("]", 1)[-1].strip()[:60]
                for line in _log_since(stack.worker.log_path, log_offset).splitlines()
                if "time limit" in line.lower()
            }
        ),
    )
    announced = _announcements(kafka_broker.url, job_ids)
    assert set(announced) == set(job_ids)
    assert [job for job, events in announced.items() if len(events) != 1] == []


def test_a_202_holds_when_redis_and_the_worker_are_killed_right_after(stack, kafka_broker):
    """500 REST submissions while the worker is paused; then Redis and the worker are SIGKILLed and
    Redis comes back empty (its queue lost): beat's safety net makes every job from PostgreSQL."""
    payloads = [submission_payload(customer=f"held-{i % 4}") for i in range(500)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    worker_processes = [
        psutil.Process(stack.worker.process.pid),
        *psutil.Process(stack.worker.process.pid).children(recursive=True),
    ]
    for process in worker_processes:
        process.suspend()  # the queue fills and waits, as it does under load

    def submit(payload: dict) -> int:
        body = {
            "submission": {"id": payload["submission"]["id"], "customer": payload["submission"]["customer"]},
            "classification": payload["classification"],
        }
        return stack.call("POST", f"/sample/{payload['submission']['sample']['id']}/submission", body)[0]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(submit, payloads))
    assert statuses == [202] * 500
    stack.redis.process.kill()  # SIGKILL: what Redis held only in memory is gone
    stack.worker.kill()
    made_before = stack.count("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)
    waiting = stack.count("SELECT count(*) FROM pending_submissions")
    print(f"killed with {made_before} of 500 jobs made and {waiting} submissions waiting in PostgreSQL")
    assert made_before + waiting == 500 and waiting > 0

    stack.redis.stop()
    stack.redis = start_redis(stack.dir / "redis-2", port=stack.redis.port)  # empty: the queued tasks are gone
    stack.worker.start()
    _wait_for_jobs(stack, job_ids, timeout=180)
    assert stack.count("SELECT count(*) FROM pending_submissions") == 0
    assert stack.count("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids) == 500
    announced = _announcements(kafka_broker.url, job_ids)
    assert set(announced) == set(job_ids)
    assert [job for job, events in announced.items() if len(events) != 1] == []
