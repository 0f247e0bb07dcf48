"""B4: the time to time out the same number of stale jobs (N/100: 10,000 at N = 1M) in tables of N/100,
N/10 and N jobs, with service.sweep_execution_timeouts in batches of SAMPLEDB_SWEEP_BATCH_SIZE until done.

Before each run the same set of jobs (chosen once, kept in a `bench_stale` table of the
benchmark's database) is made `executing` again with its tasks, its last update 2 h to
10 days ago, and the tables are vacuumed, so every run starts from the same state. Jobs the
loader made `executing` get a fresh heartbeat (within 50 minutes) before each run, as their
analyzers would send: the sweep leaves them alone.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.clock import now_ms
from app.config import Settings
from app.jobs import service
from bench.stats import median, summarize_runs

CHOOSE = """
CREATE TABLE IF NOT EXISTS bench_stale (id uuid PRIMARY KEY);
TRUNCATE bench_stale;
INSERT INTO bench_stale SELECT id FROM jobs ORDER BY id LIMIT :stale;
"""

RESET_JOBS = """
UPDATE jobs SET state = 'executing', end_timestamp = NULL, message = NULL, abort_requested = false,
    abort_requested_timestamp = NULL, abort_reason = NULL,
    start_timestamp = coalesce(start_timestamp, enqueued_timestamp),
    last_updated_timestamp = :now - 7200000 - (hashtext(id::text) & 1048575) * 800
WHERE id IN (SELECT id FROM bench_stale)
"""

# The other executing jobs' analyzers keep reporting: their heartbeat stays within the last 50 minutes
# however long ago the data set was loaded, so the sweep finds exactly the stale set.
HEARTBEAT = """
UPDATE jobs SET last_updated_timestamp = :now - (hashtext(id::text) & 1048575) * 2
WHERE state = 'executing' AND last_updated_timestamp < :now - 3000000
  AND id NOT IN (SELECT id FROM bench_stale)
"""

RESET_TASKS = """
UPDATE job_tasks SET state = 'executing', end_timestamp = NULL,
    start_timestamp = coalesce(start_timestamp, enqueued_timestamp)
WHERE job_id IN (SELECT id FROM bench_stale)
"""


def _reset(engine: sa.Engine, now: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(RESET_JOBS), {"now": now})
        conn.execute(sa.text(HEARTBEAT), {"now": now})
        conn.execute(sa.text(RESET_TASKS))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) jobs"))
        conn.execute(sa.text("VACUUM (ANALYZE) job_tasks"))


def _sweep_until_done(engine: sa.Engine, settings: Settings) -> dict:
    statements = [0]

    def count(*_args) -> None:
        statements[0] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    batches = []
    started = time.perf_counter()
    try:
        with so.Session(engine) as session:
            while True:
                batch_started = time.perf_counter()
                moved = service.sweep_execution_timeouts(session, settings, now_ms(), settings.sweep_batch_size)
                session.commit()
                batches.append({"jobs": moved, "seconds": round(time.perf_counter() - batch_started, 4)})
                if moved < settings.sweep_batch_size:
                    break
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    seconds = time.perf_counter() - started
    swept = sum(b["jobs"] for b in batches)
    return {
        "seconds": round(seconds, 3),
        "swept": swept,
        "jobs_per_s": round(swept / seconds, 1),
        "batches": len(batches),
        "statements": statements[0],
        "batch_seconds": [b["seconds"] for b in batches],
    }


def prepare(database_url: str, stale: int) -> None:
    """Choose the stale set of this database (once)."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for statement in CHOOSE.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement), {"stale": stale})
    engine.dispose()


def run_one_size(settings: Settings, table_jobs: int, stale: int, runs: int = 3) -> dict:
    engine = sa.create_engine(settings.database_url, pool_size=2)
    prepare(settings.database_url, stale)
    results = []
    try:
        for _ in range(runs):
            _reset(engine, now_ms())
            result = _sweep_until_done(engine, settings)
            if result["swept"] != stale:
                raise RuntimeError(f"B4 swept {result['swept']} jobs, expected the {stale} stale ones")
            results.append(result)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE bench_stale"))
    finally:
        engine.dispose()
    return {
        "table_jobs": table_jobs,
        "stale_jobs": stale,
        **summarize_runs(results, ("seconds", "jobs_per_s", "statements")),
    }


def summarize(sizes: list[dict]) -> dict:
    smallest, largest = sizes[0], sizes[-1]
    return {
        "sizes": sizes,
        "ratio_largest_to_smallest": round(largest["seconds"] / smallest["seconds"], 3),
        "statements_per_job": round(median(s["statements"] for s in sizes) / smallest["stale_jobs"], 2),
    }
