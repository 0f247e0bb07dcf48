"""The benchmark harness (`make bench`) at a tiny scale: loader, B1, B2, B4, B6, B7 and the report.

Runs the harness's own functions on the test session's PostgreSQL server (in databases
the harness creates and drops), so a change to the schema or the search code that breaks
the benchmarks shows up here. B7 starts its own gunicorn and Celery worker on the session's
Redis (in a database of its own) and Kafka broker. B3 is left to `make bench`.
"""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from app.dev.redis import start_redis
from app.extensions import db
from bench import report
from bench.run import Config, durations, run_benchmarks
from bench.stack import Databases, Servers, empty_redis_database

pytestmark = pytest.mark.committing  # the harness commits in databases of its own

JOBS = 2000
SEARCHES = {"default_list", "customer_state", "sha256", "seed_example_any", "seed_example_all", "sorted_offset"}


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


# B1's load comes from wrk when it is installed and from a Python generator otherwise: both must
# work, so a machine without wrk runs `make bench` too. CI installs wrk (.ci/run) to run both.
@pytest.mark.parametrize(
    "generator",
    [
        "python",
        pytest.param(
            "wrk",
            marks=pytest.mark.skipif(
                shutil.which("wrk") is None, reason="wrk is not installed (Debian: apt-get install wrk)"
            ),
        ),
    ],
)
def test_bench_harness_at_tiny_scale(postgres_server_url, database_url, app, tmp_path, monkeypatch, generator):
    monkeypatch.setenv("BENCH_LOAD_GENERATOR", generator)
    servers = Servers(postgres_server_url, redis_url=None, kafka_bootstrap=None)
    dbs = Databases(postgres_server_url, servers.run_id)
    config = Config(jobs=JOBS, quick=True, only=("B1", "B2", "B4", "B6"), durations=durations(quick=True))
    try:
        results = run_benchmarks(servers, dbs, config, tmp_path)
    finally:
        dbs.drop_all()
    paths = report.write(results, results_dir=tmp_path / "results", docs_dir=tmp_path / "docs")
    data = json.loads(paths[0].read_text())

    assert data["errors"] == {}
    assert data["dataset"]["jobs"] == JOBS
    assert 1.5 < data["dataset"]["tasks_per_job"] < 2.5
    assert set(data["dataset"]["states"]) == {"enqueued", "executing", "done", "failed", "timeout", "aborted"}

    b1 = data["B1"]
    assert b1["load_generator"].startswith(generator)
    for side in ("target", "baseline"):
        assert all(_is_positive_number(b1[side][k]) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms")), b1[side]
        assert len(b1[side]["runs"]) == 3
        rps = b1[side]["spread"]["rps"]
        assert rps["min"] <= b1[side]["rps"] == rps["median"] <= rps["max"]
    # CPU per request counts the target's PostgreSQL backends (the embedded server runs here).
    assert b1["postgresql_cpu_readable"] is True
    assert _is_positive_number(b1["target"]["spread"]["cpu_ms_per_request"]["postgresql"]["median"])
    assert _is_positive_number(b1["ratio_rps"]) and _is_positive_number(b1["ratio_cpu_per_request"])
    assert _is_positive_number(b1["api_worker_rss"]["peak_rss_mb"])

    assert set(data["B2"]["searches"]) == SEARCHES
    for name, search in data["B2"]["searches"].items():
        for key in (
            "api_p50_ms",
            "api_p95_ms",
            "raw_sql_p50_ms",
            "raw_sql_p95_ms",
            "ratio_p95",
            "explain_execution_ms",
        ):
            assert _is_positive_number(search[key]), (name, key, search[key])
        assert search["plans"] and all(p["nodes"] for p in search["plans"]), name
        assert search["count"] >= 1, name  # every search finds something in the data set
    served = data["B2"]["served"]
    assert served["load_generator"].startswith(generator) and set(served["searches"]) == SEARCHES
    for name, figures in served["searches"].items():
        assert all(_is_positive_number(figures[k]) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms")), (name, figures)
        assert _is_positive_number(figures["spread"]["cpu_ms_per_request"]["postgresql"]["median"]), name

    sizes = data["B4"]["sizes"]
    assert [s["table_jobs"] for s in sizes][:2] == [JOBS // 100, JOBS // 10]
    assert sizes[2]["table_jobs"] >= JOBS
    assert all(s["stale_jobs"] == JOBS // 100 and _is_positive_number(s["seconds"]) for s in sizes)
    assert _is_positive_number(data["B4"]["ratio_largest_to_smallest"])

    b6 = data["B6"]
    assert b6["deleted"]["outbox"] == JOBS and b6["deleted"]["jobs"] == JOBS // 10
    assert b6["deleted"]["job_history"] >= 3 * JOBS // 10 and b6["deleted"]["job_tasks"] > JOBS // 10
    assert all(_is_positive_number(rate) for phase in b6["purge"].values() for rate in phase["rows_per_s"].values())
    assert b6["get_job_during_purge"]["chunks"] >= 1 and b6["get_job_idle"]["chunks"] >= 3
    assert _is_positive_number(b6["ratio_p99"])
    assert [s["cache_seconds"] for s in b6["metrics_scrape"]] == [0, 5]
    assert all(_is_positive_number(s["p99_ms"]) for s in b6["metrics_scrape"])

    assert _is_positive_number(data["B5"]["api_worker_peak_rss_mb"])
    assert {row["id"] for row in data["goals"]} == {"B1", "B2", "B4", "B5", "B6"}
    assert all(isinstance(row["met"], bool) for row in data["goals"] if row["id"] not in ("B5", "B6"))
    assert [row["met"] is None for row in data["goals"] if row["id"] == "B6"] == [True, False, False]

    doc = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert report.BEGIN in doc and report.END in doc and "| B4 |" in doc
    assert (tmp_path / "docs" / "bench-sweep.png").stat().st_size > 0

    # The harness ran an app of its own in-process; the test session's app kept its engine and database.
    assert db.engine_of(app).url.database == sa.make_url(database_url).database
    engine = sa.create_engine(postgres_server_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        left = conn.scalars(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"sampledb_bench_{servers.run_id}%"}
        ).all()
    engine.dispose()
    assert left == []


def test_policy_evaluation_figures(settings):
    """bench/policy.py (part of B3) at a tiny scale: with the snapshot cached, deciding a job's tasks runs one
    primary-key read (the policy's generation, once per ingest batch); read afresh, the three of the snapshot."""
    from bench import policy

    figures = policy.run(settings, submissions_per_count=50)
    assert [r["rules"] for r in figures["by_rules"]] == list(policy.RULE_COUNTS)
    for row in figures["by_rules"]:
        assert (row["statements_cached"], row["statements_read_afresh"]) == (1, 4)
        assert row["ingest_statements_read_afresh"] - row["ingest_statements_cached"] == 3
        assert _is_positive_number(row["us_per_submission"])


@pytest.mark.celery
def test_bench_intake_b7_b8_at_tiny_scale(postgres_server_url, kafka_broker, tmp_path):
    """B7 and B8 (the capacity curve) at a tiny scale: gunicorn, a Celery worker and Kafka for real, on a Redis
    server of its own (the session's Redis holds the other tests' keys) and topics of the run's own site (the
    test session's worker never sees these submissions)."""
    redis_server = start_redis(tmp_path / "redis")
    servers = Servers(
        postgres_server_url,
        redis_url=empty_redis_database(redis_server.url),
        kafka_bootstrap=kafka_broker.url,
        _redis_was_empty=True,
    )
    dbs = Databases(postgres_server_url, servers.run_id)
    config = Config(jobs=1000, quick=True, only=("B7", "B8"), durations=durations(quick=True))
    try:
        results = run_benchmarks(servers, dbs, config, tmp_path)
    finally:
        dbs.drop_all()
        servers.stop()
        redis_server.stop()
    paths = report.write(results, results_dir=tmp_path / "results", docs_dir=tmp_path / "docs")
    data = json.loads(paths[0].read_text())

    assert data["errors"] == {}
    b7 = data["B7"]
    assert len(b7["accepted"]["runs"]) == 3
    assert all(_is_positive_number(b7["accepted"][k]) for k in ("per_s", "p50_ms", "p99_ms")), b7["accepted"]
    for run in b7["latency_at_rate"]["runs"]:
        # Every submission the intake accepted became a job whose creation message reached Kafka.
        assert run["accepted"] >= 1 and run["missing"] == 0 and run["seen"] == run["accepted"], run
        assert _is_positive_number(run["p99_ms"]) and _is_positive_number(run["accepted_p99_ms"]), run
    b8 = data["B8"]
    assert [step["rate"] for step in b8["steps"]] == [50, 100, 200, 400, 800]
    for step in b8["steps"]:
        assert step["accepted"] >= 1 and step["missing"] == 0 and step["seen"] == step["accepted"], step
        assert _is_positive_number(step["accepted_per_s"]) and _is_positive_number(step["p99_ms"]), step
        assert _is_positive_number(step["cpu_ms_per_submission"]["gunicorn"]), step
    assert b8["knee_per_s"] is None or b8["knee_per_s"] in (50, 100, 200, 400, 800)
    assert {row["id"] for row in data["goals"]} == {"B7", "B8"}
    assert len(data["goals"]) == 5 and all(isinstance(row["met"], bool) for row in data["goals"])
    floor = b8["database_floor"]
    assert floor["submissions"] >= 1 and _is_positive_number(floor["per_s"]), floor
    assert _is_positive_number(floor["postgresql_cpu_ms_per_submission"]), floor  # the session's own server
    doc = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "| B7 |" in doc and "| B8 |" in doc and "### B8: REST intake capacity" in doc
    assert "### CPU per submission, every process" in doc and "REST path, 200/s offered (B8)" in doc
    assert (tmp_path / "docs" / "bench-intake-latency.png").stat().st_size > 0
    assert (tmp_path / "docs" / "bench-capacity.png").stat().st_size > 0
