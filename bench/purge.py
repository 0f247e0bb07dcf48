"""B6: retention and metrics at a million jobs.

- The purge: `outbox_rows` sent outbox rows two days old (1,000,000 at N = 1M) and
  `expired_jobs` final jobs past retention (100,000) with their tasks and three history
  entries each, deleted by app.operations.retention.purge as the beat task does; rows/s per table.
- GET /job/{id} p99 under load (B1's load generator, gunicorn as the Procfile runs it) in
  chunks while the purge runs, against the same number of chunks without it, in one run.
- GET /metrics p99 at N jobs, with the gauges read on every scrape (cache 0) and with the
  default cache.

It deletes jobs of the benchmark database, so it runs last.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.clock import now_ms
from app.config import Settings
from app.operations import retention
from bench import api_load
from bench.processes import start_gunicorn
from bench.stack import settings_env
from bench.stats import median, percentile

DAY_MS = 86_400_000
# Older than any job of the data set (it spans a year), so exactly the chosen jobs are past retention.
JOB_RETENTION_DAYS = 400
HISTORY_PER_JOB = 3

SENT_OUTBOX = """
INSERT INTO outbox (event_id, topic, key, value, created_timestamp, sent_timestamp, attempts, next_attempt_timestamp)
SELECT gen_random_uuid(), 'Sample.Analysis.Job.Event.OSL', k.id::text,
    jsonb_build_object('jobID', k.id, 'fromState', 'executing', 'toState', 'done', 'timestamp', :sent,
                       'user', NULL, 'message', 'All tasks final: success'),
    :sent - 50, :sent, 1, 0
FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, :n)) AS k
"""

CHOOSE_EXPIRED = """
CREATE TABLE bench_expired AS
SELECT id FROM jobs WHERE state IN ('done', 'failed', 'timeout', 'aborted') ORDER BY id LIMIT :n
"""

AGE_EXPIRED = "UPDATE jobs SET end_timestamp = :ended WHERE id IN (SELECT id FROM bench_expired)"

HISTORY = """
INSERT INTO job_history (job_id, task_id, timestamp, user_id, from_state, to_state, message)
SELECT e.id, NULL, :ended - 1000 * (3 - s.n), NULL, (ARRAY[NULL, 'enqueued', 'executing'])[s.n],
       (ARRAY['enqueued', 'executing', 'done'])[s.n], NULL
FROM bench_expired e, generate_series(1, :per_job) AS s(n)
"""


def _execute(engine: sa.Engine, statements: list[tuple[str, dict]]) -> None:
    with engine.begin() as conn:
        for statement, params in statements:
            conn.execute(sa.text(statement), params)


def _vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("outbox", "jobs", "job_tasks", "job_history"):
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))


def prepare(engine: sa.Engine, outbox_rows: int, expired_jobs: int) -> dict:
    now = now_ms()
    ended = now - (JOB_RETENTION_DAYS + 1) * DAY_MS
    started = time.perf_counter()
    _execute(
        engine,
        [
            (SENT_OUTBOX, {"n": outbox_rows, "sent": now - 2 * DAY_MS}),
            ("DROP TABLE IF EXISTS bench_expired", {}),
            (CHOOSE_EXPIRED, {"n": expired_jobs}),
            (AGE_EXPIRED, {"ended": ended}),
            (HISTORY, {"ended": ended, "per_job": HISTORY_PER_JOB}),
        ],
    )
    _vacuum(engine)
    with engine.connect() as conn:
        counts = {
            table: conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            for table in ("outbox", "jobs", "job_tasks", "job_history")
        }
        expired = {
            table: conn.scalar(sa.text(f"SELECT count(*) FROM {table} WHERE job_id IN (SELECT id FROM bench_expired)"))
            for table in ("job_tasks", "job_history")
        }
    return {"seconds": round(time.perf_counter() - started, 1), "table_rows": counts, "expired": expired}


class _Purge(threading.Thread):
    """The purge as beat runs it: first the outbox alone, then the jobs; each phase timed."""

    def __init__(self, engine: sa.Engine, settings: Settings):
        super().__init__(daemon=True)
        self.engine, self.settings = engine, settings
        self.phases: dict[str, dict] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._phase("outbox", replace(self.settings, job_retention_days=0))
            self._phase("jobs", replace(self.settings, job_retention_days=JOB_RETENTION_DAYS))
        except BaseException as err:  # reported by the caller
            self.error = err

    def _phase(self, name: str, settings: Settings) -> None:
        started = time.perf_counter()
        with so.Session(self.engine) as session:
            purged = retention.purge(session, settings)
        seconds = time.perf_counter() - started
        self.phases[name] = {
            "seconds": round(seconds, 2),
            "deleted": purged.by_table(),
            "rows_per_s": {table: round(count / seconds) for table, count in purged.by_table().items() if count},
        }


def _chunks(
    load,
    base: str,
    ids: list[str],
    key: str,
    chunk: float,
    workdir: Path,
    *,
    count: int | None = None,
    until: threading.Thread | None = None,
) -> list[dict]:
    """Load chunks of `chunk` s: `count` of them, or as long as `until` runs."""
    results = []
    while (count is not None and len(results) < count) or (until is not None and until.is_alive()):
        results.append(load(base, api_load.JOB_PATH, ids, key, chunk, workdir, len(results) * 2749))
    return results


def _scrapes(url: str, count: int) -> dict:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            assert response.status == 200
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "scrapes": count,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


def _scrape_p99(settings: Settings, workdir: Path, count: int, cache_seconds: int) -> dict:
    env = {**settings_env(settings), "SAMPLEDB_METRICS_CACHE_SECONDS": str(cache_seconds)}
    server, base = start_gunicorn("wsgi:app", env, workdir / f"gunicorn-metrics-{cache_seconds}.log", "/metrics")
    try:
        _scrapes(base + "/metrics", 5)  # warm up both workers
        return {"cache_seconds": cache_seconds, **_scrapes(base + "/metrics", count)}
    finally:
        server.stop()


def run(
    settings: Settings, api_key: str, workdir: Path, *, outbox_rows: int, expired_jobs: int, chunk: float, scrapes: int
) -> dict:
    engine = sa.create_engine(settings.database_url, pool_size=2)
    try:
        scrape = [_scrape_p99(settings, workdir, scrapes, cache) for cache in (0, settings.metrics_cache_seconds)]
        prepared = prepare(engine, outbox_rows, expired_jobs)
        ids = api_load._sample_ids(settings.database_url)
        with engine.connect() as conn:  # load only jobs the purge keeps: a purged id would answer 404
            expired = {str(i) for i in conn.scalars(sa.text("SELECT id FROM bench_expired"))}
        ids = [i for i in ids if i not in expired]
        generator = api_load.load_generator()
        load = api_load.job_load(generator == "wrk")
        server, base = start_gunicorn(
            "wsgi:app", settings_env(settings), workdir / "gunicorn-b6.log", api_load.HEALTH_PATH
        )
        try:
            load(base, api_load.JOB_PATH, ids, api_key, chunk, workdir, 0)  # warm-up
            purge = _Purge(engine, settings)
            purge.start()
            during = _chunks(load, base, ids, api_key, chunk, workdir, until=purge)
            purge.join()
            idle = _chunks(load, base, ids, api_key, chunk, workdir, count=max(3, len(during)))
        finally:
            server.stop()
        if purge.error is not None:
            raise purge.error
        for chunk_result in during + idle:
            if chunk_result["errors"] or chunk_result["non_2xx"]:
                raise RuntimeError(f"B6 load saw errors: {chunk_result}")
        deleted = {
            table: sum(p["deleted"][table] for p in purge.phases.values())
            for table in ("outbox", "jobs", "job_tasks", "job_history")
        }
        expected = {"outbox": outbox_rows, "jobs": expired_jobs, **prepared["expired"]}
        if deleted != expected:
            raise RuntimeError(f"B6 purged {deleted}, expected {expected}")
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE bench_expired"))
    finally:
        engine.dispose()
    p99_during, p99_idle = median(c["p99_ms"] for c in during), median(c["p99_ms"] for c in idle)
    return {
        "prepared": prepared,
        "batch_size": settings.purge_batch_size,
        "purge": purge.phases,
        "deleted": deleted,
        "load_generator": generator,
        "chunk_s": chunk,
        "get_job_during_purge": {
            "chunks": len(during),
            "p99_ms": round(p99_during, 2),
            "rps": round(median(c["rps"] for c in during), 1),
            "runs": during,
        },
        "get_job_idle": {
            "chunks": len(idle),
            "p99_ms": round(p99_idle, 2),
            "rps": round(median(c["rps"] for c in idle), 1),
            "runs": idle,
        },
        "ratio_p99": round(p99_during / p99_idle, 3),
        "metrics_scrape": scrape,
    }
