"""Simulated analyzers for `sampledb-jobs demo --analyze`: every job followed to its end.

One runner per registered analysis worker analyses each task in a short random time and
reports success; the first submitted job whose analysis had not started yet is held
instead, aborted over the API as soon as it is executing (not when the demo ends: a held
analysis gives up after HOLD_SECONDS), and must end `aborted` through the analyzer's
`cancelled` report. An abort the API refuses (the job was already final) is a line of the
summary and fails the demo, never a traceback.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from analyzer.base import Analyzer, Job, Result
from analyzer.client import ApiError, Client
from analyzer.runner import Runner

FINAL = {"done", "failed", "timeout", "aborted"}
ABORT_REASON = "demo: aborted mid-analysis"
# A held analysis that never hears of its abort gives up after this long (and the demo fails).
HOLD_SECONDS = 120.0


class SimulatedAnalyzer(Analyzer):
    """Sleeps a random while (ending early if stopped) and succeeds; the held job waits for its abort."""

    def __init__(self, worker: str, simulation: Simulation):
        self.worker = worker
        self.simulation = simulation

    def analyse(self, job: Job) -> Result | None:
        if self.simulation.begins(job.id):
            job.stop.wait(HOLD_SECONDS)
            return Result("failed", "the abort request never reached the analyzer")
        job.stop.wait(self.simulation.rng.uniform(*self.simulation.seconds))
        return None


class Simulation:
    """Runners for every analysis worker, started at once; `submitted` names candidate jobs to abort."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        bootstrap: str,
        site: str,
        *,
        concurrency: int = 16,
        seconds: tuple[float, float] = (0.05, 0.5),
        seed: int | None = None,
        join_timeout: float = 60,
        kafka_security: dict | None = None,
    ):
        self.client = Client(api_url, api_key, retry_seconds=60)
        self.rng = random.Random(seed)
        self.seconds = seconds
        self.victim: str | None = None
        self.victim_running = threading.Event()
        self.abort_refused: str | None = None  # the API's answer to the abort, when it refused it
        self._abort_sent = threading.Event()
        self._started: set[str] = set()
        self._lock = threading.Lock()
        workers = sorted(w["shortName"] for w in self.client.workers())
        self.runners = [
            Runner(
                SimulatedAnalyzer(name, self),
                api_url=api_url,
                api_key=api_key,
                bootstrap_servers=bootstrap,
                kafka_security=kafka_security,
                site=site,
                concurrency=concurrency,
                heartbeat_seconds=5,
            )
            for name in workers
        ]
        self.threads = [threading.Thread(target=r.run, name=f"simulated-{r.worker}", daemon=True) for r in self.runners]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + join_timeout
        for runner in self.runners:
            if not runner.joined.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"the simulated analyzer {runner.worker} did not join its consumer group")

    @property
    def workers(self) -> list[str]:
        return [r.worker for r in self.runners]

    def begins(self, job_id: str) -> bool:
        """Note that an analysis of the job starts; True if it is the job to hold for the abort (its first
        analysis to start sends the abort, from a thread of its own)."""
        with self._lock:
            self._started.add(job_id)
            hold = job_id == self.victim
            first = hold and not self.victim_running.is_set()
            if first:
                self.victim_running.set()
        if first:
            threading.Thread(target=self._abort_victim, name="demo-abort", daemon=True).start()
        return hold

    def _abort_victim(self) -> None:
        assert self.victim is not None  # begins() starts this only for the victim
        try:
            self.client.abort_job(self.victim, ABORT_REASON)
        except ApiError as refused:
            self.abort_refused = str(refused)
        finally:
            self._abort_sent.set()

    def submitted(self, job_id: str) -> None:
        """A job of this demo; the first one no analyzer has started yet becomes the one to abort."""
        with self._lock:
            if self.victim is None and job_id not in self._started:
                self.victim = job_id

    def finish(self, job_ids: list[str], wait_seconds: float, on_progress=None) -> tuple[list[tuple[str, str]], bool]:
        """Abort the held job, wait until every job is final, stop the runners; the summary rows and
        whether every job ended as it should (done, the aborted one aborted)."""
        aborted_in_time = (
            self.victim is not None
            and self.victim_running.wait(min(wait_seconds, 60))
            and self._abort_sent.wait(min(wait_seconds, 60))
        )
        jobs = self._wait_final(job_ids, wait_seconds, on_progress)
        for runner in self.runners:
            runner.stop()
        for thread in self.threads:
            thread.join(30)
        states = [j["state"] for j in jobs.values()]
        done = [j["endTimestamp"] - j["enqueuedTimestamp"] for j in jobs.values() if j["state"] == "done"]
        victim_state = jobs.get(self.victim, {}).get("state") if self.victim is not None else None
        rows = [
            ("analysis workers simulated", ", ".join(self.workers)),
            ("jobs done", str(states.count("done"))),
            ("jobs aborted mid-analysis", f"{states.count('aborted')} ({self.victim}: {victim_state})"),
            *([("abort refused", self.abort_refused)] if self.abort_refused else []),
            ("jobs failed / timed out", f"{states.count('failed')} / {states.count('timeout')}"),
            ("jobs not final", str(len(job_ids) - sum(s in FINAL for s in states))),
            ("time to done p50", f"{_percentile(done, 50):.0f} ms"),
            ("time to done p99", f"{_percentile(done, 99):.0f} ms"),
        ]
        ok = (
            aborted_in_time
            and self.abort_refused is None
            and victim_state == "aborted"
            and len(jobs) == len(job_ids)
            and all(j["state"] == "done" for i, j in jobs.items() if i != self.victim)
        )
        return rows, ok

    def _wait_final(self, job_ids: list[str], wait_seconds: float, on_progress) -> dict[str, dict]:
        jobs: dict[str, dict] = {}
        deadline = time.monotonic() + wait_seconds

        def fetch(job_id: str) -> dict | None:
            try:
                return self.client.get_job(job_id)
            except ApiError:
                return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            while time.monotonic() < deadline:
                open_ids = [i for i in job_ids if jobs.get(i, {}).get("state") not in FINAL]
                if not open_ids:
                    break
                for job_id, job in zip(open_ids, pool.map(fetch, open_ids)):
                    if job is not None:
                        jobs[job_id] = job
                if on_progress:
                    on_progress(sum(j["state"] in FINAL for j in jobs.values()))
                time.sleep(0.5)
        return jobs


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
