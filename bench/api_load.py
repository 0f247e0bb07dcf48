"""B1 (GET /job/{id} under concurrent load) and B5's API figure (peak RSS of a gunicorn worker).

Two gunicorns run as the Procfile runs the API (app.dev.commands.GUNICORN_OPTIONS): the service
(`app.factory:create_app()`) and bench.baseline_app, whose extra route answers the same job JSON
without the database. The load comes from a separate process, `wrk`, whose Lua script
cycles over 10,000 job ids and sends the key; without wrk on PATH (Debian: `apt-get install
wrk`) a Python multi-process generator stands in.

On a shared machine the req/s of one run moves with whatever else runs, so B1 makes many
short runs alternating target / baseline (each ratio compares neighbours), reports the
spread (min / median / max), and measures CPU time per request: the CPU seconds of every
process that serves it (gunicorn master and workers, and for the target the PostgreSQL
backends of its connections), from psutil before and after each run, divided by the
requests answered. That figure does not depend on how busy the machine is.
"""

from __future__ import annotations

import functools
import http.client
import json
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import sqlalchemy as sa

from app.config import Settings
from app.dev.commands import GUNICORN_OPTIONS
from bench.processes import PeakRss, start_gunicorn
from bench.stack import settings_env
from bench.stats import median, percentile, spread

JOB_PATH = "/sampledb/v2/job/"
FIXED_JOB_PATH = "/bench/fixed-job"  # bench.baseline_app's route
HEALTH_PATH = "/sampledb/v2/healthz"
CONNECTIONS = 16
WRK_THREADS = 1
ID_COUNT = 10_000

WRK_IDS_SCRIPT = """
local ids = {%(ids)s}
local key = "%(key)s"
local prefix = "%(prefix)s"
local counter = %(start)d
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. ids[(counter %% #ids) + 1], {["Argus-API-Key"] = key})
end
"""
# One request again and again (B2's searches): a body as a Lua long string, which needs no escaping.
WRK_FIXED_SCRIPT = """
local key = "%(key)s"
local body = %(body)s
request = function()
  return wrk.format("%(method)s", "%(path)s", {["Argus-API-Key"] = key, ["Content-Type"] = "application/json"}, body)
end
"""
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def load_generator() -> str:
    """`wrk` when it is on PATH, else the Python generator; BENCH_LOAD_GENERATOR=python|wrk forces one."""
    chosen = os.environ.get("BENCH_LOAD_GENERATOR") or ("wrk" if shutil.which("wrk") else "python")
    if chosen not in ("wrk", "python"):
        raise ValueError(f"BENCH_LOAD_GENERATOR must be wrk or python, not {chosen!r}")
    if chosen == "wrk" and shutil.which("wrk") is None:
        raise RuntimeError("BENCH_LOAD_GENERATOR=wrk but wrk is not on PATH (Debian: apt-get install wrk)")
    return chosen


def _sample_ids(database_url: str, count: int = ID_COUNT) -> list[str]:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        ids = [str(i) for i in conn.scalars(sa.text("SELECT id FROM jobs ORDER BY random() LIMIT :n"), {"n": count})]
    engine.dispose()
    return ids


def _wrk(base: str, prefix: str, ids: list[str], key: str, duration: float, workdir: Path, start: int) -> dict:
    script = WRK_IDS_SCRIPT % {"ids": ",".join(f'"{i}"' for i in ids), "key": key, "prefix": prefix, "start": start}
    return _run_wrk(base, script, duration, workdir)


def _run_wrk(base: str, requests_script: str, duration: float, workdir: Path) -> dict:
    script = workdir / "bench-load.lua"
    script.write_text(requests_script + WRK_DONE)
    out = subprocess.run(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    line = next(text for text in out.splitlines() if text.startswith("BENCH_RESULT "))
    raw = json.loads(line[len("BENCH_RESULT ") :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": raw["errors"],
        "non_2xx": raw["non_2xx"],
        "bytes_per_request": round(raw["bytes"] / max(1, raw["requests"])),
    }


def get_request(paths: list[str], i: int) -> tuple[str, str, bytes | None]:
    """The i-th request of B1's Python generator: GET the next job id."""
    return "GET", paths[i % len(paths)], None


def _python_worker(args) -> tuple[int, int, list[float]]:
    """One load process: `threads` keep-alive connections in threads, for `duration` seconds, each sending
    `request_for(i)` (method, path, body) for its own running i.

    The clock starts here, once the process is up: spawning the pool can take longer than a
    short run, and a deadline set by the parent would leave nothing to measure.
    """
    host, port, request_for, headers, threads, duration = args
    deadline = time.time() + duration
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def loop(offset: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        i = offset
        mine = []
        while time.time() < deadline:
            i += 1
            method, path, body = request_for(i)
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
                ok = False
            mine.append((time.perf_counter() - started) * 1000)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop, args=(n * 997,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(latencies), errors[0], latencies


def python_load(base: str, request_for, headers: dict, duration: float, processes: int = 4) -> dict:
    """CONNECTIONS keep-alive connections from `processes` processes for `duration` s (closed loop):
    requests answered, req/s and latency percentiles; `non_2xx` counts failures."""
    host, port = base.removeprefix("http://").split(":")
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(
            _python_worker, [(host, int(port), request_for, headers, CONNECTIONS // processes, duration)] * processes
        )
    latencies = [ms for _, _, part in parts for ms in part]
    errors = sum(e for _, e, _ in parts)
    return {
        "requests": len(latencies),
        "seconds": duration,
        "rps": round(len(latencies) / duration, 1),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "errors": 0,
        "non_2xx": errors,
    }


def _get_json(url: str, key: str) -> dict:
    request = urllib.request.Request(url, headers={"Argus-API-Key": key})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


class ServingCpu:
    """CPU seconds (user + system) of the processes that serve a gunicorn: its master and workers, and
    with `database_url` the PostgreSQL backends connected to that database (found in pg_stat_activity;
    a backend on another machine cannot be read and counts as 0, and `postgresql_readable` says so)."""

    def __init__(self, gunicorn_pid: int, database_url: str | None = None):
        self.gunicorn = psutil.Process(gunicorn_pid)
        self.engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool) if database_url else None
        self.postgresql_readable = True

    def _backends(self) -> list[psutil.Process]:
        with self.engine.connect() as conn:
            pids = conn.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            ).all()
        found = []
        for pid in pids:
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                self.postgresql_readable = False
        return found

    @staticmethod
    def _seconds(processes) -> dict[int, float]:
        seconds = {}
        for proc in processes:
            try:
                times = proc.cpu_times()
                seconds[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        return seconds

    def sample(self) -> dict[str, dict[int, float]]:
        sample = {"gunicorn": self._seconds([self.gunicorn, *self.gunicorn.children(recursive=True)])}
        if self.engine is not None:
            sample["postgresql"] = self._seconds(self._backends())
        return sample

    @staticmethod
    def used(before: dict, after: dict) -> dict[str, float]:
        """CPU seconds per group between two samples (a process that appeared in between counts from 0)."""
        return {group: sum(s - before[group].get(pid, 0.0) for pid, s in after[group].items()) for group in after}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def side_summary(runs: list[dict]) -> dict:
    summary = {key: spread(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
    summary["cpu_ms_per_request"] = {
        group: spread(r["cpu_ms_per_request"][group] for r in runs) for group in runs[0]["cpu_ms_per_request"]
    }
    # The medians at the top level, as every other benchmark reports them.
    return {
        **{key: summary[key]["median"] for key in ("rps", "p50_ms", "p99_ms")},
        "cpu_ms": summary["cpu_ms_per_request"]["total"]["median"],
        "spread": summary,
        "runs": runs,
    }


def job_load(use_wrk: bool):
    """load(base, prefix, ids, key, duration, workdir, start) -> figures: GET prefix + id over the ids."""
    if use_wrk:
        return _wrk
    return lambda base, prefix, ids, key, duration, workdir, start: python_load(
        base, functools.partial(get_request, [prefix + i for i in ids]), {"Argus-API-Key": key}, duration
    )


def fixed_request(method: str, path: str, body: bytes | None, i: int) -> tuple[str, str, bytes | None]:
    """The i-th request of a load that sends one request again and again."""
    return method, path, body


def fixed_load(use_wrk: bool):
    """load(base, method, path, body, key, duration, workdir) -> figures: the same request over and over."""
    if use_wrk:
        return lambda base, method, path, body, key, duration, workdir: _run_wrk(
            base,
            WRK_FIXED_SCRIPT
            % {"key": key, "body": f"[==[{body.decode()}]==]" if body else "nil", "method": method, "path": path},
            duration,
            workdir,
        )
    return lambda base, method, path, body, key, duration, workdir: python_load(
        base,
        functools.partial(fixed_request, method, path, body),
        {"Argus-API-Key": key, "Content-Type": "application/json"},
        duration,
    )


def measured(load, meter: ServingCpu, *args) -> dict:
    """One load run with the CPU its server used: milliseconds per request, per group and in total."""
    before = meter.sample()
    figures = load(*args)
    used = meter.used(before, meter.sample())
    requests = max(1, figures["requests"])
    figures["cpu_ms_per_request"] = {group: round(seconds * 1000 / requests, 3) for group, seconds in used.items()}
    figures["cpu_ms_per_request"]["total"] = round(sum(used.values()) * 1000 / requests, 3)
    return figures


def run(
    settings: Settings, api_key: str, workdir: Path, *, duration: float = 3, runs: int = 7, warmup: float = 2
) -> dict:
    """B1: requests/s, p50/p99 and CPU per request of GET /job/{id} vs the baseline route, `runs` short
    runs each, alternating; B5: the API workers' peak RSS."""
    ids = _sample_ids(settings.database_url)
    env = settings_env(settings)
    use_wrk = load_generator() == "wrk"
    load = job_load(use_wrk)
    target, target_url = start_gunicorn("wsgi:app", env, workdir / "gunicorn-api.log", HEALTH_PATH)
    baseline = None
    meters: list[ServingCpu] = []
    try:
        job = _get_json(target_url + JOB_PATH + ids[0], api_key)["data"]
        fixed = workdir / "fixed-job.json"
        fixed.write_text(json.dumps(job))
        baseline, baseline_url = start_gunicorn(
            "bench.baseline_app:app",
            {**env, "BENCH_FIXED_JOB_FILE": str(fixed)},
            workdir / "gunicorn-baseline.log",
            FIXED_JOB_PATH,
        )
        target_prefix, baseline_prefix = JOB_PATH, FIXED_JOB_PATH + "?job="
        load(target_url, target_prefix, ids, api_key, warmup, workdir, 0)
        load(baseline_url, baseline_prefix, ids, api_key, warmup, workdir, 0)
        target_cpu, baseline_cpu = ServingCpu(target.pid, settings.database_url), ServingCpu(baseline.pid)
        meters = [target_cpu, baseline_cpu]
        memory = PeakRss(target.pid)
        memory.start()
        target_runs, baseline_runs = [], []
        for n in range(runs):
            target_runs.append(
                measured(load, target_cpu, target_url, target_prefix, ids, api_key, duration, workdir, (n + 1) * 2749)
            )
            baseline_runs.append(
                measured(load, baseline_cpu, baseline_url, baseline_prefix, ids, api_key, duration, workdir, 0)
            )
        rss = memory.stop()
    finally:
        for meter in meters:
            meter.close()
        target.stop()
        if baseline is not None:
            baseline.stop()
    for run_ in target_runs + baseline_runs:
        if run_["errors"] or run_["non_2xx"]:
            raise RuntimeError(f"B1 load saw errors: {run_}")
    target_summary, baseline_summary = side_summary(target_runs), side_summary(baseline_runs)
    # Each target run against the baseline run right after it: the machine's mood is shared by neighbours.
    pair_ratios = [round(t["rps"] / b["rps"], 3) for t, b in zip(target_runs, baseline_runs)]
    return {
        "load_generator": f"wrk -t{WRK_THREADS} -c{CONNECTIONS}" if use_wrk else f"python ({CONNECTIONS} connections)",
        "gunicorn": " ".join(GUNICORN_OPTIONS),
        "duration_s": duration,
        "runs": runs,
        "job_ids": len(ids),
        "response_bytes": len(json.dumps(job)),
        "target": target_summary,
        "baseline": baseline_summary,
        "ratio_rps": round(median(pair_ratios), 3),
        "ratio_rps_spread": spread(pair_ratios),
        "ratio_cpu_per_request": round(target_summary["cpu_ms"] / baseline_summary["cpu_ms"], 3),
        "postgresql_cpu_readable": target_cpu.postgresql_readable,
        "api_worker_rss": rss,
    }
