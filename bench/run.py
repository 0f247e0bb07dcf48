"""The whole benchmark run: servers, data set, B2, B1, B3, B7, B4, then the results, table and charts.

Order matters: B3 and B7 add jobs to the big database and B4 changes 10,000 of its jobs and
leaves their events in the outbox, so B3 and B7 run after the read benchmarks and before B4.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.accounts.keys import create_key
from app.clock import now_ms
from app.config import Settings
from bench import api_load, dataset, ingest, intake, machine, policy, purge, report, searches, sweep
from bench.stack import Databases, Servers, bench_settings, start_servers

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parent.parent
ALL = ("B1", "B2", "B3", "B3R", "B4", "B7", "B8", "B6")
# B3R: B3 again with RabbitMQ as Celery's broker, in a virtual host of the run's own on this RabbitMQ.
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Config:
    jobs: int = 1_000_000
    quick: bool = False
    only: tuple[str, ...] = ALL
    durations: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ=os.environ) -> Config:
        jobs = int(environ.get("BENCH_JOBS", "1000000"))
        if jobs < 1000:
            raise SystemExit(f"BENCH_JOBS must be at least 1000 (the sweep needs N/100 stale jobs), got {jobs}")
        quick = environ.get("BENCH_QUICK", "") not in ("", "0")
        only = tuple(p.strip().upper() for p in environ.get("BENCH_ONLY", ",".join(ALL)).split(",") if p.strip())
        unknown = set(only) - set(ALL)
        if unknown:
            raise SystemExit(f"BENCH_ONLY names unknown benchmarks: {', '.join(sorted(unknown))} (known: {ALL})")
        return cls(jobs=jobs, quick=quick, only=only, durations=durations(quick))


def durations(quick: bool) -> dict:
    if quick:
        return {
            "b1_duration": 1,
            "b1_runs": 3,
            "b1_warmup": 1,
            "b2_requests": 5,
            "b2_warmup": 1,
            "b2_served_duration": 1,
            "b2_served_runs": 1,
            "b3_duration": 3,
            "b3_bulk_duration": 3,
            "b3_latency_duration": 2,
            "b3_baseline_duration": 0.5,
            "b3_noop_tasks": 100,
            "b7_duration": 1,
            "b7_latency_duration": 1,
            "b8_duration": 1,
            "b6_chunk": 1,
            "b6_scrapes": 20,
            "runs": 3,
        }
    return {
        "b1_duration": 3,
        "b1_runs": 7,
        "b1_warmup": 2,
        "b2_requests": 30,
        "b2_warmup": 3,
        "b2_served_duration": 3,
        "b2_served_runs": 3,
        "b3_duration": 60,
        "b3_bulk_duration": 30,
        "b3_latency_duration": 20,
        "b3_baseline_duration": 5,
        "b3_noop_tasks": 3000,
        "b7_duration": 10,
        "b7_latency_duration": 20,
        "b8_duration": 20,
        "b6_chunk": 5,
        "b6_scrapes": 300,
        "runs": 3,
    }


def _viewer_key(database_url: str) -> str:
    """An all-customers SAMPLEDB-VIEWER key, as the analysis system's dashboards would use."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with so.Session(engine) as session:
        key = create_key(
            session, user="bench-viewer", customer="bench-customer-01", role="SAMPLEDB-VIEWER", all_customers=True
        )
        session.commit()
    engine.dispose()
    return key


def _count_jobs(database_url: str) -> int:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        count = conn.scalar(sa.text("SELECT count(*) FROM jobs"))
    engine.dispose()
    return count


def _sweep_sizes(servers: Servers, dbs: Databases, config: Config, settings, main_url: str) -> dict:
    stale, runs = config.jobs // 100, config.durations["runs"]
    sizes = []
    for table_jobs in (config.jobs // 100, config.jobs // 10):
        db = dbs.create(f"sweep_{table_jobs}")
        db_settings = bench_settings(db.url, servers)
        dataset.load_jobs(db.url, table_jobs, now_ms(), site=db_settings.site)
        sizes.append(sweep.run_one_size(db_settings, table_jobs, stale, runs))
        dbs.drop(db.name)
    sizes.append(sweep.run_one_size(settings, _count_jobs(main_url), stale, runs))
    return sweep.summarize(sizes)


def run_benchmarks(servers: Servers, dbs: Databases, config: Config, workdir: Path) -> dict:
    """Every benchmark in `config.only` on these servers; the results as one JSON-ready dict.

    A benchmark that fails is recorded as {"error": ...} and the others still run, so a late
    failure does not cost the figures already measured."""
    d = config.durations
    runs = d["runs"]
    timings: dict = {}
    results: dict = {
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {"jobs": config.jobs, "quick": config.quick, "only": list(config.only), "durations": d},
        "code": machine.code_version(REPO),
        "load_average_start": machine.load_average(),
        "timings_s": timings,
    }
    log.info("loading %d jobs ...", config.jobs)
    started = time.perf_counter()
    main_db = dbs.create("main")
    settings = bench_settings(main_db.url, servers)
    results["machine"] = machine.describe(main_db.url, servers.redis_url, servers.kafka_bootstrap, set(servers.pids()))
    results["dataset"] = dataset.load_jobs(main_db.url, config.jobs, now_ms(), site=settings.site)
    timings["load"] = round(time.perf_counter() - started, 1)
    key = _viewer_key(main_db.url)

    def b3(on: Settings, broker_pids: dict[str, int]) -> dict:
        """B3 with the broker of `on`; `broker_pids`: its processes when it is not one of the run's servers."""
        return ingest.run(
            on,
            workdir,
            {**servers.pids(), **broker_pids},
            duration=d["b3_duration"],
            bulk_duration=d["b3_bulk_duration"],
            latency_duration=d["b3_latency_duration"],
            baseline_duration=d["b3_baseline_duration"],
            noop_tasks=d["b3_noop_tasks"],
            runs=runs,
        )

    # B3 and B7 add jobs to the big database and B4 changes 10,000 of them: all after the read benchmarks.
    benchmarks = {
        "B2": (
            "searches",
            lambda: searches.run(
                settings,
                key,
                workdir,
                requests=d["b2_requests"],
                rounds=runs,
                warmup=d["b2_warmup"],
                served_duration=d["b2_served_duration"],
                served_runs=d["b2_served_runs"],
            ),
        ),
        "B1": (
            "GET /job/{id} under load",
            lambda: api_load.run(
                settings, key, workdir, duration=d["b1_duration"], runs=d["b1_runs"], warmup=d["b1_warmup"]
            ),
        ),
        "B3": ("ingest", lambda: {**b3(settings, {}), "policy_evaluation": policy.run(settings)}),
        "B3R": ("ingest with RabbitMQ as Celery's broker", lambda: _on_rabbitmq(settings, b3)),
        "B7": (
            "REST intake",
            lambda: intake.run(
                settings,
                workdir,
                servers.pids(),
                duration=d["b7_duration"],
                latency_duration=d["b7_latency_duration"],
                runs=runs,
            ),
        ),
        "B8": (
            "REST intake capacity curve",
            lambda: intake.capacity(settings, workdir, servers.pids(), duration=d["b8_duration"]),
        ),
        "B4": ("sweep", lambda: _sweep_sizes(servers, dbs, config, settings, main_db.url)),
        # Deletes jobs of the big database: last.
        "B6": (
            "retention and metrics",
            lambda: purge.run(
                settings,
                key,
                workdir,
                outbox_rows=config.jobs,
                expired_jobs=config.jobs // 10,
                chunk=d["b6_chunk"],
                scrapes=d["b6_scrapes"],
            ),
        ),
    }
    for name, (what, measure) in benchmarks.items():
        if name not in config.only:
            continue
        log.info("%s %s ...", name, what)
        started = time.perf_counter()
        try:
            results[name] = measure()
        except Exception as err:  # recorded; main() exits non-zero
            log.exception("%s failed", name)
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        timings[name] = round(time.perf_counter() - started, 1)
        log.info("%s done in %.1f s", name, timings[name])

    results["B5"] = {
        "api_worker_peak_rss_mb": results.get("B1", {}).get("api_worker_rss", {}).get("peak_rss_mb"),
        "celery_worker_peak_rss_mb": results.get("B3", {}).get("celery_worker_rss", {}).get("peak_rss_mb"),
    }
    results["errors"] = {name: results[name]["error"] for name in ALL if "error" in results.get(name, {})}
    results["load_average_end"] = machine.load_average()
    results["goals"] = report.goals(results)
    return results


def _on_rabbitmq(settings, measure):
    """`measure(settings, pids)` with Celery's broker a virtual host of this run's own on the RabbitMQ of
    BENCH_RABBITMQ_URL (removed afterwards), and the broker's process ids for the CPU figures."""
    import dataclasses

    import psutil

    from app.dev.rabbitmq import RabbitVhost

    vhost = RabbitVhost(RABBITMQ_URL, prefix="sampledb_bench")
    beams = [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "beam.smp" and any("rabbit" in part for part in p.info["cmdline"] or ())
    ]
    pids = {"rabbitmq": beams[0]} if beams else {}
    try:
        return measure(dataclasses.replace(settings, celery_broker_url=vhost.url), pids)
    finally:
        vhost.delete()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = Config.from_env()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="sampledb-bench-run-"))
    log.info(
        "BENCH_JOBS=%d%s; logs of gunicorn and Celery in %s",
        config.jobs,
        " BENCH_QUICK" if config.quick else "",
        workdir,
    )
    servers = start_servers(need_workers=bool({"B3", "B3R", "B7", "B8"} & set(config.only)))
    dbs = Databases(servers.postgres_url, servers.run_id)
    try:
        results = run_benchmarks(servers, dbs, config, workdir)
    except BaseException:
        log.error("benchmark run failed; the logs of gunicorn and the Celery workers are in %s", workdir)
        raise
    finally:
        dbs.drop_all()
        servers.stop()
    if results["errors"]:
        log.error("the logs of gunicorn and the Celery workers are in %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    paths = report.write(results, results_dir=REPO / "bench" / "results", docs_dir=REPO / "docs")
    for path in paths:
        log.info("wrote %s", path)
    log.info("total runtime %.1f s", results["runtime_s"])
    print(report.table(results))
    if results["errors"]:
        log.error("failed: %s", results["errors"])
        return 1
    return 0
