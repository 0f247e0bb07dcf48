"""B7: the REST intake (POST /sample/{sha256}/submission) through gunicorn as `make run` serves it.

gunicorn with the Procfile's options (app.dev.commands.GUNICORN_OPTIONS), a real Celery worker
(app.dev.commands.celery_worker, every queue), the bench's database, Redis and Kafka; an
all-customers SAMPLEDB-UPLOADER key.

* accepted: closed loop, CONNECTIONS keep-alive connections (bench.api_load's Python
  generator), each POST a new submission of a new sample; submissions/s answered 202 and the
  202 latency.
* latency: 200 submissions/s offered open-loop (each connection of a thread pool sends its
  share at its scheduled time); the 202 latency, and submission → creation message on Kafka
  (seen by bench.ingest's follower), split at the job's commit and the relay's send.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.keys import create_key
from app.config import Settings
from app.dev import commands
from app.dev.commands import GUNICORN_OPTIONS
from bench import ingest
from bench.api_load import CONNECTIONS, HEALTH_PATH, python_load
from bench.processes import REPO, start_gunicorn
from bench.stack import settings_env
from bench.stats import percentile, summarize_runs

SUBMISSION_PATH = "/sampledb/v2/sample/{sha256}/submission"
LATENCY_RATE = 200
OPEN_LOOP_THREADS = 16
CUSTOMER = "bench-customer-01"


def submission_request(i: int, submission_id: str | None = None) -> tuple[str, str, bytes]:
    """The i-th REST submission: a new sample, the classification a sample service would send."""
    sha256 = uuid.uuid4().hex + uuid.uuid4().hex
    kind = ingest.PAYLOAD_KINDS[i % len(ingest.PAYLOAD_KINDS)]
    body = {
        "classification": {
            "type": kind[0],
            "superType": kind[1],
            "arch": kind[2],
            "platform": kind[3],
            "version": "1",
            "meta": {},
        },
        "submission": {
            "name": f"sample-{i}.bin",
            "mimeType": "application/octet-stream",
            "tlp": "amber",
            "metaData": {"source": "bench"},
        },
    }
    if submission_id is not None:
        body["submission"]["id"] = submission_id
    return "POST", SUBMISSION_PATH.format(sha256=sha256), json.dumps(body).encode()


def _uploader_key(database_url: str) -> str:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with so.Session(engine) as session:
        key = create_key(
            session, user="bench-uploader", customer=CUSTOMER, role="SAMPLEDB-UPLOADER", all_customers=True
        )
        session.commit()
    engine.dispose()
    return key


def _open_loop(base: str, headers: dict, rate: float, duration: float) -> tuple[dict, dict, list[float]]:
    """Offer `rate` submissions/s for `duration` s: thread k sends submissions k, k + T, ... each at its
    scheduled time (or at once when late). Returns the run's figures, {submission id: time sent} of the
    accepted ones and the 202 latencies (ms)."""
    host, port = base.removeprefix("http://").split(":")
    total = int(rate * duration)
    started = time.time() + 0.2
    sent: dict[str, float] = {}
    answered: list[float] = []
    failures = [0]
    behind = [0.0]
    lock = threading.Lock()

    def sender(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for n in range(k, total, OPEN_LOOP_THREADS):
            submission_id = str(uuid.uuid4())
            method, path, body = submission_request(n, submission_id)
            pause = started + n / rate - time.time()
            if pause > 0:
                time.sleep(pause)
            at = time.time()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 202
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                ok = False
            with lock:
                behind[0] = max(behind[0], -pause)
                if ok:
                    sent[submission_id] = at
                    answered.append((time.time() - at) * 1000)
                else:
                    failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(OPEN_LOOP_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = {
        "offered": total,
        "accepted": len(sent),
        "failed": failures[0],
        "rate": rate,
        "duration": duration,
        "started": started,
        "sender_max_behind_s": round(behind[0], 3),
    }
    return info, sent, answered


@dataclasses.dataclass
class _Stack:
    base: str
    headers: dict
    follower: ingest.Follower
    cpu: ingest.CpuMeter
    accepted: int  # submissions answered 202 so far: every one reaches Kafka, in the end
    seen: dict = dataclasses.field(default_factory=dict)  # the follower's arrivals, once it stopped


@contextlib.contextmanager
def _intake_stack(settings: Settings, workdir: Path, servers_pids: dict[str, int], name: str):
    """gunicorn and a Celery worker as `make run` starts them, warmed up, and a follower of the job topic."""
    env = settings_env(settings)
    env["PYTHONPATH"] = str(REPO)
    key = _uploader_key(settings.database_url)
    headers = {"Argus-API-Key": key, "Content-Type": "application/json"}
    worker = ingest.start_worker(commands.CELERY_APP, None, env, workdir / f"celery-{name}.log")
    api = follower = stack = None
    try:
        ingest.wait_worker_ready(settings.celery_broker, worker)
        api, base = start_gunicorn("wsgi:app", env, workdir / f"gunicorn-{name}.log", HEALTH_PATH)
        follower = ingest.Follower(settings.kafka_bootstrap_servers, settings.job_topic)
        warm = python_load(base, submission_request, headers, 1)  # warm-up: the topic, the worker's producer
        if not follower.wait_for(1, 90):
            raise RuntimeError(f"no creation message reached Kafka:\n{worker.log_tail()}")
        cpu = ingest.CpuMeter(
            {
                "gunicorn": (api.pid, "tree"),
                "worker main": (worker.pid, "self"),
                "worker pool": (worker.pid, "children"),
                **{name: (pid, "tree") for name, pid in servers_pids.items()},
                "bench load": (os.getpid(), "reaped"),
                "bench follower": (follower.process.pid, "self"),
            }
        )
        stack = _Stack(base, headers, follower, cpu, warm["requests"] - warm["non_2xx"])
        yield stack
    finally:
        if follower is not None:
            seen = follower.stop()
            if stack is not None:
                stack.seen = seen
        if api is not None:
            api.stop()
        worker.stop()


def _open_figures(database_url: str, info: dict, sent: dict, answered: list, seen: dict) -> tuple[dict, list, str]:
    """One open-loop run's figures (202 and → Kafka latency), its sorted → Kafka latencies and the commit clock."""
    committed, clock = ingest.committed_at(database_url, list(sent))
    figures, total = ingest.latency_figures(sent, seen, committed)
    if not total:
        raise RuntimeError(
            f"none of the {len(sent)} submissions accepted at {info['rate']}/s "
            f"({info['failed']} refused) reached Kafka within 120 s of the run's end"
        )
    return (
        {
            **{k: v for k, v in info.items() if k != "started"},
            **figures,
            "accepted_p50_ms": round(percentile(answered, 50), 1) if answered else None,
            "accepted_p99_ms": round(percentile(answered, 99), 1) if answered else None,
        },
        sorted(total),
        clock,
    )


def run(
    settings: Settings,
    workdir: Path,
    servers_pids: dict[str, int],
    *,
    duration: float = 10,
    latency_duration: float = 20,
    runs: int = 3,
) -> dict:
    """B7: submissions/s accepted with CONNECTIONS connections and the 202 latency (closed loop), then the
    202 and submission → Kafka latency at LATENCY_RATE submissions/s offered (open loop); `runs` each."""
    closed, open_runs, phases = [], [], []
    with _intake_stack(settings, workdir, servers_pids, "b7") as stack:
        for _ in range(runs):
            stack.cpu.start()
            figures = python_load(stack.base, submission_request, stack.headers, duration)
            closed.append({**figures, "per_s": figures["rps"], "cpu_cores": stack.cpu.stop()})
            stack.accepted += figures["requests"] - figures["non_2xx"]
        stack.follower.wait_for(stack.accepted, 120)  # the open loop starts on an idle pipeline
        for _ in range(runs):
            stack.cpu.start()
            info, sent, answered = _open_loop(stack.base, stack.headers, LATENCY_RATE, latency_duration)
            info["cpu_cores"] = stack.cpu.stop()
            stack.accepted += len(sent)
            stack.follower.wait_for(stack.accepted, 120)
            phases.append((info, sent, answered))
    for run_ in closed:
        if run_["non_2xx"]:
            raise RuntimeError(f"B7 closed loop saw {run_['non_2xx']} answers other than 2xx: {run_}")
    samples, clock = [], None
    for info, sent, answered in phases:
        figures, total, clock = _open_figures(settings.database_url, info, sent, answered, stack.seen)
        open_runs.append(figures)
        samples.append(
            {
                "kafka_ms": [round(ms, 1) for ms in total],
                "accepted_ms": [round(ms, 1) for ms in sorted(answered)],
            }
        )
    return {
        "gunicorn": " ".join(GUNICORN_OPTIONS),
        "connections": CONNECTIONS,
        "worker": " ".join(["celery", *commands.celery_worker()[3:]]),
        "accepted": summarize_runs(closed, ("per_s", "p50_ms", "p99_ms")),
        "latency_at_rate": summarize_runs(open_runs, ("p50_ms", "p99_ms", "accepted_p50_ms", "accepted_p99_ms")),
        "latency_samples_ms": samples,
        "commit_clock": ingest.COMMIT_CLOCKS[clock] if clock else None,
    }


def _settled(database_url: str, stack: _Stack, timeout: float = 180) -> int:
    """Once nothing waits to be made or announced: how many jobs the follower has seen. A count of 202s
    would not do as the baseline: a closed loop's last requests, cut off at its end, may still commit."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    deadline, quiet = time.monotonic() + timeout, 0
    try:
        while quiet < 3:  # three readings in a row: a request cut off may commit between two
            with engine.connect() as conn:
                waiting = conn.scalar(
                    sa.text(
                        "SELECT (SELECT count(*) FROM pending_submissions)"
                        " + (SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL)"
                    )
                )
            quiet = quiet + 1 if waiting == 0 else 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"{waiting} submissions and outbox rows still waiting after {timeout:.0f} s")
            time.sleep(0.2)
        seen, steady = stack.follower.seen(), 0
        while steady < 4:  # the last relayed records reach the follower: its count still for a second
            time.sleep(0.25)
            steady, seen = (steady + 1, seen) if stack.follower.seen() == seen else (0, stack.follower.seen())
        return seen
    finally:
        engine.dispose()


CAPACITY_RATES = (50, 100, 200, 400, 800)
KNEE_KAFKA_P99_MS = 1000  # below the knee, p99 submission → Kafka stays within this
KNEE_ACCEPTED_SHARE = 0.95  # and nearly all of the offered rate is accepted


def capacity(
    settings: Settings, workdir: Path, servers_pids: dict[str, int], *, rates=CAPACITY_RATES, duration: float = 20
) -> dict:
    """B8: the REST path's capacity curve. Each rate of `rates` offered open loop for `duration` s on an idle
    pipeline: accepted/s, the 202 latency and submission → Kafka, CPU per accepted submission of each process;
    the knee is the highest rate still accepted in full (KNEE_ACCEPTED_SHARE) with p99 → Kafka ≤ 1 s."""
    phases = []
    with _intake_stack(settings, workdir, servers_pids, "b8") as stack:
        for rate in rates:
            announced = _settled(settings.database_url, stack)
            stack.cpu.start()
            started = time.perf_counter()
            info, sent, answered = _open_loop(stack.base, stack.headers, rate, duration)
            info["elapsed_s"] = round(time.perf_counter() - started, 2)
            info["cpu_cores"] = stack.cpu.stop()
            stack.follower.wait_for(announced + len(sent), 180)
            phases.append((info, sent, answered))
    steps = []
    for info, sent, answered in phases:
        figures, _, _ = _open_figures(settings.database_url, info, sent, answered, stack.seen)
        per_s = len(sent) / info["elapsed_s"]
        figures["accepted_per_s"] = round(per_s, 1)
        figures["cpu_ms_per_submission"] = {
            name: round(cores * 1000 / per_s, 2) for name, cores in info["cpu_cores"].items() if per_s
        }
        steps.append(figures)
    below = [
        step["rate"]
        for step in steps
        if step["accepted_per_s"] >= KNEE_ACCEPTED_SHARE * step["rate"] and step["p99_ms"] <= KNEE_KAFKA_P99_MS
    ]
    return {
        "duration_s": duration,
        "steps": steps,
        "knee_per_s": max(below) if below else None,
        "database_floor": ingest.database_floor(settings),
    }
