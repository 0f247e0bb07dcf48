"""B3 (ingest: submission -> job -> creation message acknowledged by Kafka) and B5's Celery figure.

Submissions are offered by sending the Celery task `sampledb.ingest_submission` by name
(app.dispatch.send_ingest, the upstream sample service's path) to a real worker
(`celery -A workers.celery_app worker` on every queue, `-c 2`: app.dev.commands) on the bench's
Redis, database (the 1M-job one) and Kafka. A follower process reads the job topic with
manual partition assignment (no consumer group; Tansu's end_offsets() is not used) and
notes when each creation message arrives.

* sustained: offer as fast as the pipeline takes them, at most WINDOW submissions in flight
  (offered but not yet on Kafka), for `duration` s; the figure is creation messages per second.
* latency: offer 400 submissions/s open-loop; latency = creation message seen - task sent,
  split into intake -> job committed (PostgreSQL's commit timestamp, COMMIT_CLOCKS) -> relayed (the record's
  CreateTime, set by the relay's producer) -> seen by the follower.
* baselines: a no-op Celery task on the same broker and worker options (bench.noop_worker),
  single-row INSERT + COMMIT on one connection, and the relay's own producer
  (workers.kafka.producer: acks=all, idempotent) sending 1.5 KB messages.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import queue
import socket
import time
import uuid
from pathlib import Path

import psutil
import sqlalchemy as sa

from app.config import Settings
from app.dev import commands
from app.dev.kafka import TopicReader
from app.dev.processes import Child
from app.dev.synthetic import submission_payload
from bench.processes import REPO, PeakRss, start_child
from bench.stack import settings_env
from bench.stats import percentile, summarize_runs

WINDOW = 800
LATENCY_RATE = 400
BULK_BATCH = 50  # submissions per sampledb.ingest_submissions task
OPEN_LOOP_MAX_IN_FLIGHT = 2000
PRODUCE_IN_FLIGHT = 1000
PAYLOAD_KINDS = [
    ("PE", "executable", "x86", "win"),
    ("ELF", "executable", "x86_64", "linux"),
    ("DOCX", "document", None, None),
    ("APK", "executable", "arm", "android"),
]


def payload(n: int, customer: str) -> dict:
    """A submission shaped as the seed's creation message shows it."""
    file_type, super_type, arch, platform = PAYLOAD_KINDS[n % len(PAYLOAD_KINDS)]
    return submission_payload(
        customer,
        file_type=file_type,
        super_type=super_type,
        arch=arch,
        platform=platform,
        name=f"sample-{n}.bin",
        tlp="amber",
        meta_data={"source": "mail-gateway", "key": "value"},
    )


# -- the follower: a process reading the job topic ----------------------------------------------


def _follow(bootstrap: str, topic: str, ready, stop, seen_count, out) -> None:
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)
    # From the end: an earlier benchmark's messages on this topic (B3 before B7) are not this one's to count.
    reader = TopicReader(
        bootstrap,
        topic,
        from_end=True,
        create=True,
        wait=120,
        client_id="sampledb-bench-follower",
        fetch_max_wait_ms=20,
    )
    seen: dict[str, tuple[float, int]] = {}
    parent = os.getppid()
    try:
        if reader.partitions:
            ready.set()
            # A bench killed by a signal leaves no one to set `stop`: end with it rather than poll on.
            while not stop.is_set() and os.getppid() == parent:
                records = reader.poll(0.05)
                now = time.time()
                for record in records:
                    submission_id = json.loads(record.value)["submission"]["id"]
                    seen.setdefault(submission_id, (now, record.timestamp))
                seen_count.value = len(seen)
    finally:
        reader.close()
        out.put(seen)


class Follower:
    """A process following `topic` from its current end; made once it reads (RuntimeError if it cannot
    within `timeout`), so that nothing sent after it is missed."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 90):
        context = multiprocessing.get_context("spawn")
        self.ready, self.stop_event = context.Event(), context.Event()
        self.count = context.Value("l", 0)
        self.out = context.Queue()
        self.process = context.Process(
            target=_follow, args=(bootstrap, topic, self.ready, self.stop_event, self.count, self.out), daemon=True
        )
        self.process.start()
        if not self.ready.wait(timeout):
            self.process.terminate()
            raise RuntimeError(f"the topic follower could not read {topic}")

    def seen(self) -> int:
        return self.count.value

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count.value < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> dict[str, tuple[float, int]]:
        self.stop_event.set()
        try:
            seen = self.out.get(timeout=60)
        except queue.Empty:
            raise RuntimeError(
                f"the topic follower ended without its results (exit code {self.process.exitcode})"
            ) from None
        self.process.join(10)
        return seen


# -- helpers -------------------------------------------------------------------------------------


class CpuMeter:
    """Cores busy on average, per named group of processes, between start() and stop().

    A group is (pid, what): "self" the process alone, "children" its descendants, "tree" both, "reaped"
    the process with the children it has waited for (a load generator's pool processes, which are gone
    by the time stop() reads them; its live children, servers and workers, are groups of their own).
    """

    def __init__(self, groups: dict[str, tuple[int, str]]):
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.started = 0.0

    @staticmethod
    def _cpu(pid: int, what: str) -> dict[int, float]:
        """CPU seconds so far of each process of the group, by pid."""
        try:
            root = psutil.Process(pid)
            processes = ([root] if what in ("self", "tree", "reaped") else []) + (
                root.children(recursive=True) if what in ("children", "tree") else []
            )
        except psutil.Error:
            return {}
        seconds = {}
        for proc in processes:
            try:
                times = proc.cpu_times()
                seconds[proc.pid] = (
                    times.user
                    + times.system
                    + (times.children_user + times.children_system if what == "reaped" else 0.0)
                )
            except psutil.Error:
                pass
        return seconds

    def start(self) -> None:
        self.before = {name: self._cpu(*group) for name, group in self.groups.items()}
        self.started = time.perf_counter()

    def stop(self) -> dict:
        """Per group, the CPU its processes used since start() ÷ the seconds since. A process that ended in
        between (a PostgreSQL backend closed mid-run) is not counted at all, rather than subtracted."""
        seconds = time.perf_counter() - self.started
        busy = {}
        for name, group in self.groups.items():
            before = self.before.get(name, {})
            busy[name] = round(sum(cpu - before.get(pid, 0.0) for pid, cpu in self._cpu(*group).items()) / seconds, 2)
        return busy


def start_worker(app_module: str, queues: list[str] | None, env: dict, log_path: Path) -> Child:
    argv = commands.celery_worker(
        "--loglevel", "WARNING", "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h", queues=queues, app=app_module
    )
    return start_child(f"celery {app_module}", argv, env, log_path)


def _queue_drained(client, queue: str) -> bool:
    return client.llen(queue) == 0 and client.hlen("unacked") == 0


def _tasks_done(control, hostname: str, task: str) -> int:
    """How many `task`s the worker has run (its own count: RabbitMQ's statistics lag by seconds)."""
    replies = control.inspect(destination=[hostname], timeout=1, limit=1).stats() or {}
    return sum(reply.get("total", {}).get(task, 0) for reply in replies.values())


# -- baselines ----------------------------------------------------------------------------------


def noop_rate(settings: Settings, env: dict, workdir: Path, tasks: int, servers_pids: dict[str, int]) -> dict:
    """No-op tasks per second through the broker and a `-c 2` worker: sent as fast as possible, until drained."""
    import redis

    from bench import noop_worker

    # celeryconfig read this process's environment, not the bench's settings: an app for this broker.
    sender = noop_worker.make_app(settings.celery_broker)
    hostname = f"bench-noop-{uuid.uuid4().hex[:6]}"
    argv = commands.celery_worker(
        "--loglevel",
        "WARNING",
        "--hostname",
        f"{hostname}@%h",
        queues=[noop_worker.NOOP_QUEUE],
        app="bench.noop_worker",
    )
    worker = start_child("celery bench.noop_worker", argv, env, workdir / "celery-noop.log")
    client = None if settings.broker_is_amqp else redis.Redis.from_url(settings.redis_url)
    control = sender.control
    node = f"{hostname}@{socket.gethostname()}"
    runs = []
    try:
        wait_worker_ready(settings.celery_broker, worker)
        cpu = CpuMeter(
            {
                "worker main": (worker.pid, "self"),
                "worker pool": (worker.pid, "children"),
                **{name: (pid, "tree") for name, pid in servers_pids.items() if name == "redis"},
                "bench sender": (os.getpid(), "self"),
            }
        )
        for _ in range(3):
            cpu.start()
            started = time.perf_counter()
            for n in range(tasks):
                sender.send_task(noop_worker.NOOP_TASK, args=[n], queue=noop_worker.NOOP_QUEUE)
            if client is not None:
                while not _queue_drained(client, noop_worker.NOOP_QUEUE):
                    time.sleep(0.005)
            else:
                while _tasks_done(control, node, noop_worker.NOOP_TASK) < tasks * (len(runs) + 1):
                    time.sleep(0.2)  # each look is a control message the worker answers: not too often
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "tasks": tasks,
                    "seconds": round(seconds, 3),
                    "per_s": round(tasks / seconds, 1),
                    "cpu_cores": cpu.stop(),
                }
            )
    finally:
        worker.stop()
        if client is not None:
            client.close()
    return summarize_runs(runs, ("per_s",))


def wait_worker_ready(broker_url: str, worker: Child, timeout: float = 60) -> None:
    from app.dispatch import celery_client

    control = celery_client(broker_url).control
    worker.wait_until(lambda left: control.ping(timeout=0.5), timeout, "answering a ping")


def insert_commit_rate(settings: Settings, duration: float) -> dict:
    """Single-row INSERT + COMMIT per second on one connection (a 1.5 KB JSONB row)."""
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    value = json.dumps(payload(0, "bench-customer-01"))
    runs = []
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, value jsonb)"))
        conn.commit()
        raw = conn.connection.dbapi_connection
        for _ in range(3):
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < duration:
                raw.execute("INSERT INTO bench_insert (value) VALUES (%s::jsonb)", (value,))
                raw.commit()
                count += 1
            seconds = time.perf_counter() - started
            runs.append({"rows": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1)})
        conn.execute(sa.text("DROP TABLE bench_insert"))
        conn.commit()
    engine.dispose()
    return {**summarize_runs(runs, ("per_s",)), "row_bytes": len(value)}


FLOOR_TABLES = ("jobs", "job_tasks", "job_history", "outbox")


def _floor_rows(raw, job_ids: list) -> dict[str, str]:
    """What ingest writes for these jobs, table by table, as JSON arrays of rows: the jobs and their tasks as the
    data set holds them, one history entry each, one outbox row each whose value is the job's submission and
    classification (the size of its creation message)."""
    return {
        "jobs": raw.execute("SELECT json_agg(j)::text FROM jobs j WHERE id = ANY(%s)", (job_ids,)).fetchone()[0],
        "job_tasks": raw.execute(
            "SELECT json_agg(t)::text FROM job_tasks t WHERE job_id = ANY(%s)", (job_ids,)
        ).fetchone()[0],
        "job_history": raw.execute(
            "SELECT json_agg(json_build_object('job_id', id, 'timestamp', enqueued_timestamp, 'to_state', "
            "'enqueued', 'message', 'created'))::text FROM jobs WHERE id = ANY(%s)",
            (job_ids,),
        ).fetchone()[0],
        "outbox": raw.execute(
            "SELECT json_agg(json_build_object('event_id', gen_random_uuid(), 'topic', 'sampledb.job', 'key', id, "
            "'value', json_build_object('jobID', id, 'submission', submission, 'classification', classification), "
            "'created_timestamp', enqueued_timestamp, 'attempts', 0, 'next_attempt_timestamp', 0))::text "
            "FROM jobs WHERE id = ANY(%s)",
            (job_ids,),
        ).fetchone()[0],
    }


def database_floor(settings: Settings, *, submissions: int = 4000, batch: int = 250) -> dict:
    """The database's own cost of what ingest writes per submission (SPEC 6.1): the rows of `submissions` jobs
    of the data set (the job, its tasks, a history entry, an outbox row) inserted again, `batch` submissions
    per transaction, one INSERT per table and a COMMIT, into tables LIKE the real ones (their indexes and
    defaults included). Wall time, and CPU per submission of the PostgreSQL backend and of this client (which
    only sends what it read before the clock started)."""
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.autocommit = True
        ids = [row[0] for row in raw.execute("SELECT id FROM jobs ORDER BY id LIMIT %s", (submissions,))]
        batches = [_floor_rows(raw, ids[i : i + batch]) for i in range(0, len(ids), batch)]
        columns = {table: list(json.loads(batches[0][table])[0]) if batches[0][table] else [] for table in FLOOR_TABLES}
        for table in FLOOR_TABLES:
            raw.execute(f"DROP TABLE IF EXISTS bench_floor_{table}")
            raw.execute(f"CREATE TABLE bench_floor_{table} (LIKE {table} INCLUDING ALL)")
        backend_pid = raw.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            backend: psutil.Process | None = psutil.Process(backend_pid)
            backend_before = sum(backend.cpu_times()[:2])
        except psutil.Error:  # a server on another machine
            backend, backend_before = None, 0.0
        raw.autocommit = False
        client_before, started = time.process_time(), time.perf_counter()
        for rows in batches:
            for table in FLOOR_TABLES:
                if rows[table] is None:
                    continue
                names = ", ".join(f'"{c}"' for c in columns[table])
                raw.execute(
                    f"INSERT INTO bench_floor_{table} ({names}) SELECT {names} "
                    f"FROM json_populate_recordset(NULL::bench_floor_{table}, %s)",
                    (rows[table],),
                )
            raw.commit()
        seconds = time.perf_counter() - started
        client_seconds = time.process_time() - client_before
        backend_seconds = sum(backend.cpu_times()[:2]) - backend_before if backend is not None else None
        raw.autocommit = True
        for table in FLOOR_TABLES:
            raw.execute(f"DROP TABLE bench_floor_{table}")
    engine.dispose()
    count = len(ids)
    return {
        "submissions": count,
        "batch": batch,
        "tables": list(FLOOR_TABLES),
        "per_s": round(count / seconds, 1),
        "postgresql_cpu_ms_per_submission": round(backend_seconds * 1000 / count, 3)
        if backend_seconds is not None
        else None,
        "client_cpu_ms_per_submission": round(client_seconds * 1000 / count, 3),
    }


def produce_rate(settings: Settings, duration: float) -> dict:
    """Messages per second acknowledged by Kafka through the relay's producer (workers.kafka: acks=all,
    idempotent, linger 5 ms), 1.5 KB each, with at most PRODUCE_IN_FLIGHT sent and not yet acknowledged
    (unbounded, the producer's buffer would hold more than it delivers before its delivery timeout)."""
    from workers import kafka

    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    value = json.dumps(
        {
            "jobID": str(uuid.uuid4()),
            **payload(0, "bench-customer-01"),
            "tasks": [{"id": str(uuid.uuid4()), "worker": "static-analyzer"}],
        }
    ).encode()
    value = value + b" " * max(0, 1536 - len(value))
    producer = kafka.producer(settings.kafka_bootstrap_servers)
    producer.send(topic, key=b"warmup", value=value).get(timeout=30)  # the topic exists before we time
    runs = []
    try:
        for _ in range(3):
            pending: collections.deque = collections.deque()
            acked, started = 0, time.perf_counter()
            while time.perf_counter() - started < duration:
                if len(pending) >= PRODUCE_IN_FLIGHT:
                    pending.popleft().get(timeout=30)
                    acked += 1
                pending.append(producer.send(topic, key=str(uuid.uuid4()).encode(), value=value))
            producer.flush(timeout=60)
            for future in pending:
                future.get(timeout=30)
                acked += 1
            seconds = time.perf_counter() - started
            runs.append({"messages": acked, "seconds": round(seconds, 3), "per_s": round(acked / seconds, 1)})
    finally:
        kafka.close_producer()
    return {**summarize_runs(runs, ("per_s",)), "message_bytes": len(value), "in_flight": PRODUCE_IN_FLIGHT}


# -- the pipeline -------------------------------------------------------------------------------


def _sustained(send, follower: Follower, customers: list[str], duration: float, batch: int = 1) -> tuple[dict, dict]:
    """Offer submissions as fast as the pipeline takes them: at most WINDOW offered and not yet on Kafka.
    `send` gets one payload, or a list of `batch` payloads when batch > 1."""
    base = follower.seen()
    sent: dict[str, float] = {}
    n = 0
    started = time.time()
    while time.time() - started < duration:
        if n - (follower.seen() - base) + batch > WINDOW:
            time.sleep(0.005)
            continue
        bodies = [payload(n + k, customers[(n + k) % len(customers)]) for k in range(batch)]
        now = time.time()
        for body in bodies:
            sent[body["submission"]["id"]] = now
        send(bodies if batch > 1 else bodies[0])
        n += batch
    return {"offered": n, "started": started, "duration": duration, "batch": batch}, sent


def _open_loop(send, follower: Follower, customers: list[str], rate: float, duration: float) -> tuple[dict, dict]:
    """Offer `rate` submissions/s for `duration` s, or until more than OPEN_LOOP_MAX_IN_FLIGHT are offered and
    not yet on Kafka: the pipeline does not keep up, the latency only grows from there."""
    base = follower.seen()
    sent: dict[str, float] = {}
    started = time.time()
    behind, stopped_at = 0.0, None
    for n in range(int(rate * duration)):
        pause = started + n / rate - time.time()
        if pause > 0:
            time.sleep(pause)
        else:
            behind = max(behind, -pause)
        if n - (follower.seen() - base) > OPEN_LOOP_MAX_IN_FLIGHT:
            stopped_at = round(time.time() - started, 2)
            break
        body = payload(n, customers[n % len(customers)])
        sent[body["submission"]["id"]] = time.time()
        send(body)
    return {
        "offered": len(sent),
        "started": started,
        "duration": stopped_at or duration,
        "rate": rate,
        "stopped_early_at_s": stopped_at,
        "sender_max_behind_s": round(behind, 3),
    }, sent


COMMIT_CLOCKS = {
    "commit": "the job row's commit time (pg_xact_commit_timestamp)",
    "enqueued": "the job's enqueuedTimestamp, taken before its batch's INSERTs (track_commit_timestamp is off)",
}


def committed_at(database_url: str, submission_ids: list[str]) -> tuple[dict[str, int], str]:
    """When each submission's job was committed (ms), and which clock says so (a key of COMMIT_CLOCKS):
    PostgreSQL's commit timestamp where track_commit_timestamp is on (the bench's own server), else the
    job's enqueuedTimestamp, which is earlier by the batch's own transaction."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        clock = "commit" if conn.scalar(sa.text("SHOW track_commit_timestamp")) == "on" else "enqueued"
        when = (
            "(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint"
            if clock == "commit"
            else "enqueued_timestamp"
        )
        rows = conn.execute(
            sa.text(
                f"SELECT submission_id::text, {when} FROM jobs "
                "WHERE submission_id = ANY(CAST(:ids AS uuid[])) AND NOT reanalysis"
            ),
            {"ids": submission_ids},
        ).all()
    engine.dispose()
    return {submission_id: at for submission_id, at in rows if at is not None}, clock


def latency_figures(sent: dict[str, float], seen: dict[str, tuple[float, int]], committed: dict[str, int]) -> dict:
    total, to_commit, to_relay, to_seen = [], [], [], []
    for submission_id, sent_at in sent.items():
        if submission_id not in seen:
            continue
        seen_at, produced_ms = seen[submission_id]
        total.append((seen_at - sent_at) * 1000)
        if submission_id in committed:
            to_commit.append(committed[submission_id] - sent_at * 1000)
            to_relay.append(produced_ms - committed[submission_id])
        to_seen.append(seen_at * 1000 - produced_ms)
    figures = {"seen": len(total), "missing": len(sent) - len(total)}
    for name, values in (
        ("", total),
        ("intake_to_commit_", to_commit),
        ("commit_to_relay_", to_relay),
        ("relay_to_seen_", to_seen),
    ):
        if values:
            figures[f"{name}p50_ms"] = round(percentile(values, 50), 1)
            figures[f"{name}p99_ms"] = round(percentile(values, 99), 1)
    return figures, total


def run(
    settings: Settings,
    workdir: Path,
    servers_pids: dict[str, int],
    *,
    duration: float = 60,
    bulk_duration: float = 30,
    latency_duration: float = 20,
    baseline_duration: float = 5,
    noop_tasks: int = 3000,
    runs: int = 3,
) -> dict:
    """B3 and B5 (Celery worker): baselines, then the sustained and the 400/s latency runs, `runs` each."""
    from app.dispatch import celery_client, send_ingest
    from celeryconfig import TaskNames

    env = settings_env(settings)
    env["PYTHONPATH"] = str(REPO)
    results: dict = {
        "offered_through": "Celery task sampledb.ingest_submission (app.dispatch.send_ingest)",
        "worker": " ".join(["celery", *commands.celery_worker()[3:]]),
        "window": WINDOW,
        "bulk_batch": BULK_BATCH,
    }
    results["baseline_produce"] = produce_rate(settings, baseline_duration)
    results["baseline_insert_commit"] = insert_commit_rate(settings, baseline_duration)
    results["database_floor"] = database_floor(settings)
    results["baseline_noop_task"] = noop_rate(settings, env, workdir, noop_tasks, servers_pids)

    customers = [f"bench-customer-{k:02d}" for k in range(1, 21)]
    worker = start_worker(commands.CELERY_APP, None, env, workdir / "celery-ingest.log")
    follower = None
    try:
        wait_worker_ready(settings.celery_broker, worker)
        follower = Follower(settings.kafka_bootstrap_servers, settings.job_topic)
        send = lambda body: send_ingest(settings, body)  # noqa: E731
        send_bulk = lambda bodies: celery_client(settings.celery_broker).send_task(  # noqa: E731
            TaskNames.INGEST_SUBMISSIONS, args=[bodies]
        )
        for n in range(20):  # warm-up: makes the topic, the worker's producer and its connections
            send(payload(n, customers[n % len(customers)]))
        if not follower.wait_for(20, 90):
            raise RuntimeError(f"no creation message reached Kafka:\n{worker.tail()}")
        memory = PeakRss(worker.pid, include_root=True)
        memory.start()
        # What each part of the pipeline costs: the worker's main process does the broker I/O for its pool.
        cpu = CpuMeter(
            {
                "worker main": (worker.pid, "self"),
                "worker pool": (worker.pid, "children"),
                **{name: (pid, "tree") for name, pid in servers_pids.items()},
                "bench sender": (os.getpid(), "self"),
                "bench follower": (follower.process.pid, "self"),
            }
        )
        phases = []
        expected = 20
        for kind, sender, batch, seconds in [
            ("sustained", send, 1, duration),
            ("sustained_bulk", send_bulk, BULK_BATCH, bulk_duration),
        ]:
            for _ in range(runs):
                cpu.start()
                info, sent = _sustained(sender, follower, customers, seconds, batch)
                info["cpu_cores"] = cpu.stop()
                phases.append((kind, info, sent))
                expected += len(sent)
                follower.wait_for(expected, 120)
        for _ in range(runs):
            cpu.start()
            info, sent = _open_loop(send, follower, customers, LATENCY_RATE, latency_duration)
            info["cpu_cores"] = cpu.stop()
            phases.append(("latency", info, sent))
            expected += len(sent)
            follower.wait_for(expected, 120)
        rss = memory.stop()
    finally:
        seen = follower.stop() if follower is not None else {}
        worker.stop()
    by_kind: dict[str, list] = {"sustained": [], "sustained_bulk": [], "latency": []}
    latency_samples = []
    for kind, info, sent in phases:
        committed, clock = committed_at(settings.database_url, list(sent))
        results["commit_clock"] = COMMIT_CLOCKS[clock]
        figures, total = latency_figures(sent, seen, committed)
        end = info["started"] + info["duration"]
        in_window = sum(1 for s in sent if s in seen and seen[s][0] <= end)
        by_kind[kind].append(
            {
                **{k: v for k, v in info.items() if k != "started"},
                **figures,
                "announced_in_window": in_window,
                "per_s": round(in_window / info["duration"], 1),
                "created": len(committed),
            }
        )
        if kind == "latency":
            latency_samples.append([round(ms, 1) for ms in sorted(total)])
    results["sustained"] = summarize_runs(by_kind["sustained"], ("per_s", "p50_ms", "p99_ms"))
    results["sustained_bulk"] = summarize_runs(by_kind["sustained_bulk"], ("per_s", "p50_ms", "p99_ms"))
    results["latency_at_400"] = summarize_runs(by_kind["latency"], ("per_s", "p50_ms", "p99_ms"))
    results["latency_samples_ms"] = latency_samples  # every submission of each 400/s run, for the chart
    results["ratio_to_produce"] = round(results["sustained"]["per_s"] / results["baseline_produce"]["per_s"], 3)
    results["celery_worker_rss"] = rss
    return results
