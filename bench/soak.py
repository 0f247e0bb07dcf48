"""`make soak`: the service as `make run` runs it, under steady load with simulated analyzers, for a set time.

It starts `sampledb-jobs dev` in a directory of its own (embedded servers unless SAMPLEDB_* URLs are
set, as for `make run`) and sends every other submission over the REST API, the others as
`sampledb.ingest_submission` messages, as the upstream sample service does (SOAK_INTAKE=rest or celery
for one intake only). It measures the capacity with analyzers for CALIBRATION_SUBMISSIONS submissions,
then offers half of it open-loop (each submission sent at its scheduled time, whatever the answers
before it) for SOAK_MINUTES. Every SOAK_SAMPLE_SECONDS it samples the RSS of each of the service's
processes and the service's own figures (`status --json`, the API's 5xx from its /metrics, the 202
latency the load generator saw). At the end every accepted submission must have exactly one job, every
job exactly one creation message on Kafka, and every job must end done (one is aborted mid-analysis
on purpose). It writes bench/results/soak-<date>.json and docs/soak-rss.png and prints each process's
RSS slope after the warm-up, in MB per 10,000 submissions.

Settings (environment): SOAK_MINUTES (30), SOAK_RATE (submissions/s; default half the calibrated
capacity), SOAK_WARMUP_MINUTES (5), SOAK_SAMPLE_SECONDS (60), SOAK_RESULTS (the JSON's path),
SOAK_CHART (the chart's path), SOAK_INTAKE (both, rest or celery). Other variables reach the service
as they would reach `make run` (MALLOC_ARENA_MAX=2 make soak measures the service with that allocator
setting).
"""

from __future__ import annotations

import collections
import datetime
import http.client
import itertools
import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings, read_dev_env
from app.dev.demo import TopicFollower
from app.dev.processes import Child, free_port
from app.dev.synthetic import random_submission
from app.dispatch import BrokerUnavailable, send_ingest
from app.intake.ingest import job_id_for
from bench.machine import code_version, describe
from bench.stats import percentile

log = logging.getLogger("bench.soak")

REPO = Path(__file__).resolve().parent.parent
COMMAND = str(Path(sys.executable).parent / "sampledb-jobs")  # the console script of this environment
EMBEDDED_UNLESS = {
    "postgresql": "SAMPLEDB_DATABASE_URL",
    "redis": "SAMPLEDB_REDIS_URL",
    "kafka": "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS",
}
CALIBRATION_SUBMISSIONS = 600
LOAD_THREADS = 16
READY_SECONDS = 180
FINISH_SECONDS = 300  # after the load: for the last jobs to end and be announced


@dataclass
class SoakConfig:
    minutes: float
    rate: float | None
    warmup_minutes: float
    sample_seconds: float
    results: Path
    chart: Path
    intake: str = "both"

    @classmethod
    def from_env(cls, environ=os.environ) -> SoakConfig:
        today = datetime.date.today().isoformat()
        return cls(
            minutes=float(environ.get("SOAK_MINUTES", "30")),
            rate=float(environ["SOAK_RATE"]) if environ.get("SOAK_RATE") else None,
            warmup_minutes=float(environ.get("SOAK_WARMUP_MINUTES", "5")),
            sample_seconds=float(environ.get("SOAK_SAMPLE_SECONDS", "60")),
            results=Path(environ.get("SOAK_RESULTS", REPO / "bench" / "results" / f"soak-{today}.json")),
            chart=Path(environ.get("SOAK_CHART", REPO / "docs" / "soak-rss.png")),
            intake=_intake(environ.get("SOAK_INTAKE", "both")),
        )


# -- the stack ---------------------------------------------------------------------------------


class DevStack:
    """`sampledb-jobs dev` in a directory of its own, on free ports."""

    def __init__(self, workdir: Path, environ: dict[str, str]):
        self.workdir = workdir
        self.api_port, self.flower_port, self.metrics_port = free_port(), free_port(), free_port()
        env = {
            **environ,
            "SAMPLEDB_API_PORT": str(self.api_port),
            "SAMPLEDB_FLOWER_PORT": str(self.flower_port),
            "SAMPLEDB_WORKER_METRICS_PORT": str(self.metrics_port),
            "TMPDIR": str(workdir),
        }
        # SIGINT is its Ctrl-C: it stops its processes and servers in order.
        self.child = Child("sampledb-jobs dev", workdir / "dev.log", stop_signal=signal.SIGINT)
        self.child.start([COMMAND, "dev"], cwd=workdir, env=env)
        self.api_url = f"http://127.0.0.1:{self.api_port}"

    def wait_ready(self) -> None:
        self.child.wait_until(lambda left: "sampledb-jobs is running" in self.child.output(), READY_SECONDS, "running")

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **read_dev_env(self.workdir / ".sampledb" / "dev.env")})

    @property
    def key(self) -> str:
        return (self.workdir / ".sampledb" / "dev.key").read_text().strip()

    def processes(self) -> dict[str, psutil.Process]:
        """The service's processes by role: web master and workers, Celery main and pool, beat, Flower."""
        found: dict[str, psutil.Process] = {}
        try:
            children = psutil.Process(self.child.pid).children()
        except psutil.Error:
            return found
        for child in children:
            try:
                argv = " ".join(child.cmdline())
                grandchildren = sorted(child.children(), key=lambda p: p.pid)
            except psutil.Error:
                continue
            if "gunicorn" in argv:
                found["web master"] = child
                found.update({f"web worker {i}": p for i, p in enumerate(grandchildren, 1)})
            elif "flower" in argv:
                found["flower"] = child
            elif " beat" in argv:
                found["beat"] = child
            elif " worker" in argv:
                found["celery main"] = child
                found.update({f"celery pool {i}": p for i, p in enumerate(grandchildren, 1)})
        return found

    def status(self) -> dict | None:
        done = subprocess.run(
            [COMMAND, "status", "--json"],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    def server_errors(self) -> int:
        """The API's 5xx answers so far, from its own /metrics."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/metrics", timeout=30) as response:
                text = response.read().decode()
        except OSError:
            return -1
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "sampledb_http_requests"
                for sample in family.samples
                if sample.name.endswith("_total") and sample.labels.get("status", "").startswith("5")
            )
        )

    def stop(self) -> None:
        self.child.stop(timeout=90)


# -- the load ----------------------------------------------------------------------------------


INTAKES = ("both", "rest", "celery")


def _intake(value: str) -> str:
    if value not in INTAKES:
        raise SystemExit(f"SOAK_INTAKE must be one of {', '.join(INTAKES)}, not {value!r}")
    return value


@dataclass
class Load:
    """Sends submissions, open loop at `rate` or as fast as LOAD_THREADS allow, over the REST API, as
    `sampledb.ingest_submission` messages (as the upstream sample service does), or every other one each way."""

    api_url: str
    key: str
    on_job: object  # called with each accepted job's id (the simulated analyzers' abort candidate)
    settings: Settings | None = None  # the service's; needed for the Celery intake
    intake: str = "rest"
    published: int = 0  # submissions sent as Celery messages (the others went over REST)
    accepted: dict[str, str] = field(default_factory=dict)  # submission id -> job id
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (time answered, 202 latency ms)
    failed: int = 0
    server_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    def send(self, conn: http.client.HTTPConnection, n: int) -> http.client.HTTPConnection:
        with self._lock:
            payload = random_submission(self._rng, meta_data={"source": "sampledb-jobs soak"}, user_agent="soak")
        submission_id = str(uuid.uuid4())
        payload["submission"]["id"] = submission_id
        if self.intake == "celery" or (self.intake == "both" and n % 2):
            self._publish(submission_id, payload)
            return conn
        sha256 = payload["submission"]["sample"]["id"]
        headers = {"Content-Type": "application/json", "Argus-API-Key": self.key}
        at = time.time()
        status, job_id = 0, None
        # A kept-alive connection the server closed while idle fails at once: sent again on a new one (a
        # submission is idempotent by its id, so a request that did arrive makes no second job).
        for _attempt in range(3):
            try:
                conn.request("POST", f"/sampledb/v2/sample/{sha256}/submission", json.dumps(payload), headers)
                response = conn.getresponse()
                body = response.read()
                status = response.status
                if status == 202:
                    job_id = json.loads(body)["data"]["jobID"]
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self.connection()
        answered = time.time()
        with self._lock:
            if job_id:
                self.accepted[submission_id] = job_id
                self.latencies.append((answered, (answered - at) * 1000))
            else:
                self.failed += 1
                self.server_errors += status >= 500
        if job_id:
            self.on_job(job_id)  # type: ignore[operator]
        return conn

    def _publish(self, submission_id: str, payload: dict) -> None:
        """One submission as a Celery message; its job's id is known before any worker made it (SPEC 6.1)."""
        try:
            send_ingest(self.settings, payload)
        except BrokerUnavailable:
            with self._lock:
                self.failed += 1
            return
        job_id = str(job_id_for(submission_id))
        with self._lock:
            self.accepted[submission_id] = job_id
            self.published += 1
        self.on_job(job_id)  # type: ignore[operator]

    def connection(self) -> http.client.HTTPConnection:
        address = urllib.parse.urlsplit(self.api_url)
        return http.client.HTTPConnection(address.hostname, address.port, timeout=30)

    def run(self, *, count: int | None = None, rate: float | None = None, until: float | None = None) -> None:
        started = time.time() + 0.2
        numbers = iter(range(count)) if count is not None else itertools.count()
        numbers_lock = threading.Lock()

        def sender() -> None:
            conn = self.connection()
            while True:
                with numbers_lock:
                    n = next(numbers, None)
                if n is None:
                    break
                if rate is not None:
                    due = started + n / rate
                    if until is not None and due >= until:
                        break
                    if due > time.time():
                        time.sleep(due - time.time())
                conn = self.send(conn, n)
            conn.close()

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class Analyzers:
    """The simulated analyzers of `demo --analyze`, in a process of their own: their threads must not take
    the load generator's time (in one process a 5/s load went out at 2.7/s)."""

    def __init__(self, api_url: str, key: str, bootstrap: str, site: str, security: dict | None):
        context = multiprocessing.get_context("spawn")
        self.jobs = context.Queue()
        self.results = context.Queue()
        self.process = context.Process(
            target=_analyzers_main, args=(api_url, key, bootstrap, site, security, self.jobs, self.results)
        )
        self.process.start()
        ready = self.results.get(timeout=READY_SECONDS)
        if ready != "ready":
            raise RuntimeError(f"the simulated analyzers did not start: {ready}")

    def submitted(self, job_id: str) -> None:
        self.jobs.put(job_id)

    def finish(self) -> tuple[list[tuple[str, str]], bool]:
        """Their summary rows and whether the job held mid-analysis was aborted through its `cancelled` report."""
        self.jobs.put(None)
        rows, ok = self.results.get(timeout=READY_SECONDS)
        self.process.join(60)
        return rows, ok


def _analyzers_main(api_url, key, bootstrap, site, security, jobs, results) -> None:
    from analyzer.simulate import Simulation

    try:
        simulation = Simulation(api_url, key, bootstrap, site, kafka_security=security, seed=7)
    except Exception as err:
        results.put(repr(err))
        return
    results.put("ready")
    while (job_id := jobs.get()) is not None:
        simulation.submitted(job_id)
    results.put(simulation.finish([simulation.victim] if simulation.victim else [], 60))


# -- figures -----------------------------------------------------------------------------------


def slope_per_10k(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of RSS (MB) over submissions, in MB per 10,000 submissions."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return 10_000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def rss_series(samples: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Per process: (minute, submissions, RSS MB) of each sample."""
    series: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    for sample in samples:
        for name, rss in sample["rssMB"].items():
            series[name].append((sample["minute"], sample["submissions"], rss))
    return dict(series)


def slopes(samples: list[dict], warmup_minutes: float) -> dict[str, dict]:
    figures = {}
    for name, points in rss_series(samples).items():
        after = [(subs, rss) for minute, subs, rss in points if minute >= warmup_minutes]
        slope = slope_per_10k(after)
        figures[name] = {
            "slopeMBPer10kSubmissions": None if slope is None else round(slope, 2),
            "startMB": points[0][2],
            "afterWarmupMB": after[0][1] if after else None,
            "endMB": points[-1][2],
            "peakMB": max(rss for _, _, rss in points),
        }
    return figures


def chart(samples: list[dict], warmup_minutes: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name, points in sorted(rss_series(samples).items()):
        ax.plot([p[1] for p in points], [p[2] for p in points], marker=".", label=name)
    warm = [s["submissions"] for s in samples if s["minute"] >= warmup_minutes]
    if warm:
        ax.axvline(warm[0], color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("submissions accepted")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- checks at the end -------------------------------------------------------------------------


def _jobs_by_submission(engine: sa.Engine, submission_ids: list[str]) -> tuple[dict[str, int], collections.Counter]:
    """How many jobs each submission has, and the jobs' states."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT submission_id::text, state FROM jobs "
                "WHERE NOT reanalysis AND submission_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": submission_ids},
        ).all()
    per_submission = collections.Counter(r[0] for r in rows)
    return dict(per_submission), collections.Counter(r[1] for r in rows)


# -- the run -----------------------------------------------------------------------------------


def run(config: SoakConfig) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sampledb-soak-"))
    stack = DevStack(workdir, dict(os.environ))
    try:
        stack.wait_ready()
        settings = stack.settings
        engine = sa.create_engine(settings.database_url)
        counter = TopicFollower(settings.kafka_bootstrap_servers, settings.job_topic, settings.kafka_client_options)
        counter.start()
        simulation = Analyzers(
            stack.api_url,
            stack.key,
            settings.kafka_bootstrap_servers,
            settings.site,
            settings.kafka_client_options,
        )
        load = Load(stack.api_url, stack.key, simulation.submitted, settings=settings, intake=config.intake)

        def final_count() -> int:
            return sum(
                n
                for state, n in _jobs_by_submission(engine, list(load.accepted))[1].items()
                if state in ("done", "failed", "timeout", "aborted")
            )

        # Capacity: submissions whose analyses all ended per second, the service saturated by a burst.
        capacity: float | None = None
        if config.rate is None:
            began = time.monotonic()
            load.run(count=CALIBRATION_SUBMISSIONS)
            while final_count() < len(load.accepted) and time.monotonic() - began < FINISH_SECONDS:
                time.sleep(0.5)
            capacity = len(load.accepted) / (time.monotonic() - began)
            print(f"capacity with analyzers: {capacity:.1f} submissions/s", flush=True)
        rate = config.rate or round((capacity or 0) / 2, 1)
        print(f"the soak offers {rate} submissions/s for {config.minutes:g} min", flush=True)

        samples: list[dict] = []
        soak_start = time.time()
        soak_end = soak_start + config.minutes * 60
        loader = threading.Thread(target=load.run, kwargs={"rate": rate, "until": soak_end}, daemon=True)
        base_submissions = len(load.accepted)
        loader.start()
        next_sample = soak_start
        while True:
            now = time.time()
            if now >= next_sample:
                samples.append(_sample(stack, load, soak_start, base_submissions))
                last = samples[-1]
                print(
                    f"minute {last['minute']:5.1f}: {last['submissions']:6d} submissions, "
                    + ", ".join(f"{k} {v:.0f}" for k, v in last["rssMB"].items() if "web worker" not in k)
                    + f" MB; backlog {last['outboxBacklog']}, 202 p99 {last['p99ms']} ms",
                    flush=True,
                )
                next_sample += config.sample_seconds
            if now >= soak_end and not loader.is_alive():
                break
            time.sleep(min(1.0, max(0.05, next_sample - time.time())))
        samples.append(_sample(stack, load, soak_start, base_submissions))

        # Every job of the soak to its end and on Kafka.
        submission_ids = list(load.accepted)
        deadline = time.monotonic() + FINISH_SECONDS
        while time.monotonic() < deadline:
            if final_count() >= len(submission_ids) and len(counter.counts) >= len(submission_ids):
                break
            time.sleep(1)
        # The analyzers' own check: the job held mid-analysis was aborted through its `cancelled` report.
        rows, victim_aborted = simulation.finish()
        counter.stop_event.set()
        counter.join(10)
        per_submission, states = _jobs_by_submission(engine, submission_ids)
        job_ids = set(load.accepted.values())
        announced = {j: n for j, n in counter.counts.items() if j in job_ids}
        analysed = victim_aborted and states == collections.Counter(done=len(submission_ids) - 1, aborted=1)
        checks = {
            "submissionsAccepted": len(submission_ids),
            "submissionsSentAsCeleryMessages": load.published,
            "submissionsRefusedOrFailed": load.failed,
            "clientServerErrors": load.server_errors,
            "apiServerErrors": stack.server_errors(),
            "lostJobs": sum(1 for s in submission_ids if per_submission.get(s, 0) == 0),
            "duplicatedJobs": sum(n - 1 for n in per_submission.values() if n > 1),
            "jobsNotAnnounced": len(job_ids - set(announced)),
            "creationMessagesDuplicated": sum(n - 1 for n in announced.values() if n > 1),
            "states": dict(states),
            # The analyzers' summary covers the job they were told to wait for, the one aborted mid-analysis
            # (every job's end is in "states" above): its rows about all jobs would read 0 done.
            "abortedMidAnalysis": {k: v for k, v in rows if k in ("jobs aborted mid-analysis", "abort refused")},
            "everyJobEndedAsExpected": analysed,
        }
        figures = slopes(samples, config.warmup_minutes)
        result = {
            "kind": "soak",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": describe(
                settings.database_url,
                settings.redis_url,
                settings.kafka_bootstrap_servers,
                {name for name, variable in EMBEDDED_UNLESS.items() if variable not in os.environ},
            ),
            "code": code_version(REPO),
            "config": {
                "minutes": config.minutes,
                "warmupMinutes": config.warmup_minutes,
                "sampleSeconds": config.sample_seconds,
                "rate": rate,
                "calibratedCapacity": None if capacity is None else round(capacity, 1),
                "mallocArenaMax": os.environ.get("MALLOC_ARENA_MAX"),
                "intake": config.intake,
            },
            "processes": figures,
            "checks": checks,
            "samples": samples,
        }
        config.results.parent.mkdir(parents=True, exist_ok=True)
        config.results.write_text(json.dumps(result, indent=1) + "\n")
        chart(
            samples,
            config.warmup_minutes,
            config.chart,
            f"sampledb-jobs soak: {config.minutes:g} min at {rate:g} submissions/s, RSS per process",
        )
        _print_summary(figures, checks, config)
        ok = (
            checks["lostJobs"] == 0
            and checks["duplicatedJobs"] == 0
            and checks["jobsNotAnnounced"] == 0
            and checks["creationMessagesDuplicated"] == 0
            and checks["submissionsRefusedOrFailed"] == 0
            and checks["clientServerErrors"] == 0
            and checks["apiServerErrors"] == 0
            and analysed
        )
        engine.dispose()
        return 0 if ok else 1
    finally:
        stack.stop()


def _sample(stack: DevStack, load: Load, soak_start: float, base_submissions: int) -> dict:
    rss = {}
    for name, proc in sorted(stack.processes().items()):
        try:
            rss[name] = round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    status = stack.status() or {}
    figures = status.get("figures") or {}
    now = time.time()
    with load._lock:
        recent = [ms for at, ms in load.latencies if at >= now - 60]
        submissions = len(load.accepted)
    return {
        "minute": round((now - soak_start) / 60, 2),
        "submissions": submissions - base_submissions,
        "rssMB": rss,
        "outboxBacklog": figures.get("outboxBacklog"),
        "jobsActive": figures.get("jobsActive"),
        "queueLengths": figures.get("queueLengths"),
        "apiServerErrors": stack.server_errors(),
        "p99ms": round(percentile(recent, 99), 1) if recent else None,
    }


def _print_summary(figures: dict, checks: dict, config: SoakConfig) -> None:
    print(f"\nRSS per process (MB); slope after {config.warmup_minutes:g} min of warm-up, MB per 10,000 submissions")
    for name, f in figures.items():
        print(
            f"  {name:16s} start {f['startMB']:6.1f}  end {f['endMB']:6.1f}  peak {f['peakMB']:6.1f}  "
            f"slope {f['slopeMBPer10kSubmissions']}"
        )
    print("checks: " + json.dumps({k: v for k, v in checks.items() if k != "abortedMidAnalysis"}))
    print(f"results: {config.results}\nchart: {config.chart}")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    return run(SoakConfig.from_env())


if __name__ == "__main__":
    sys.exit(main())
