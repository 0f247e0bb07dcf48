"""B2: six searches, timed in-process through the Flask test client, against the same SQL run directly;
then each served by gunicorn under load, with the CPU per request of every serving process.

For each search the statements `search_jobs` issues (one per page since the page's JSON is
PostgreSQL's; the count first for limit 0) are captured at the cursor, rendered with literal
values (psycopg's client-side mogrify) and run directly on a psycopg connection: that is the
baseline. The API side is server time: the answer is parsed after its clock stops. One
EXPLAIN (ANALYZE, BUFFERS) of each statement gives the plan and the indexes it uses.

Served: the same search sent again and again by B1's load generator (wrk, 16 connections) to a
gunicorn run as the Procfile runs it, a few short runs each: req/s, p50/p99, and CPU time per
request of gunicorn and of the PostgreSQL backends (app.api_load.ServingCpu), as B1 reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa

from app.accounts.access import EVERYONE
from app.api.schemas import SearchCriteriaSchema
from app.config import Settings
from app.jobs.search import search_jobs
from bench import api_load
from bench.processes import start_gunicorn
from bench.stack import app_bound_to, settings_env
from bench.stats import median, percentile

BASE = "/sampledb/v2"
SEED_TIME_FIELDS = ["enqueuedTimestamp", "startTimestamp", "endTimestamp"]


@dataclass(frozen=True)
class Search:
    name: str
    what: str
    body: dict | None  # None: GET /job without parameters (the default list)


def searches(sample_sha256: str, customer: str) -> list[Search]:
    seed = {
        "state": ["aborted", "timeout"],
        "startTimestamp": "now - 1 week",
        "endTimestamp": "now",
        "timeFieldStrategy": SEED_TIME_FIELDS,
        "timeMatchStrategy": "any",
    }
    return [
        Search("default_list", "GET /job (active jobs by enqueuedTimestamp)", None),
        Search("customer_state", f"customer {customer}, state failed", {"customer": [customer], "state": ["failed"]}),
        Search(
            "sha256", "sampleSha256 (upper case), all states", {"sampleSha256": [sample_sha256.upper()], "state": []}
        ),
        Search(
            "seed_example_any", "the seed's example: aborted/timeout, now - 1 week .. now, 3 time fields, any", seed
        ),
        Search("seed_example_all", "the same with timeMatchStrategy all", {**seed, "timeMatchStrategy": "all"}),
        Search(
            "sorted_offset",
            "sortBy -enqueuedTimestamp, offset 5000 (active jobs)",
            {"sortBy": ["-enqueuedTimestamp"], "offset": 5000},
        ),
    ]


def pick_targets(database_url: str) -> tuple[str, str]:
    """A sample hash that several jobs share and a mid-sized customer (the third largest)."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        sha = conn.scalar(
            sa.text(
                "SELECT sample_sha256 FROM (SELECT sample_sha256 FROM jobs ORDER BY id LIMIT 2000) s "
                "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
            )
        )
        customer = conn.scalar(
            sa.text(
                "SELECT c.short_name FROM customers c WHERE c.short_name LIKE 'bench-customer-%' ORDER BY c.short_name "
                "OFFSET 2 LIMIT 1"
            )
        )
    engine.dispose()
    return sha, customer


def capture_statements(database_url: str, search: Search) -> list[str]:
    """The SQL `search_jobs` runs for this search, with literal values."""
    criteria = SearchCriteriaSchema().load(search.body or {})
    engine = sa.create_engine(database_url, pool_size=1)
    with engine.connect():  # the dialect's first-connect queries are not the search's
        pass
    captured: list[tuple[str, object]] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, parameters, context, many: captured.append((statement, parameters)),
    )
    # As the API runs it: on an autocommit connection (app.extensions.Database.reader).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as reader:
        search_jobs(reader, criteria, EVERYONE)
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            mogrify = psycopg.ClientCursor(raw).mogrify
            statements = [
                mogrify(statement, parameters)
                for statement, parameters in captured
                if not statement.lstrip().upper().startswith(("BEGIN", "ROLLBACK"))
            ]
    engine.dispose()
    return statements


def _index_names(plan: dict) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


def _node_types(plan: dict) -> list[str]:
    types = [plan["Node Type"] + (f" on {plan['Relation Name']}" if "Relation Name" in plan else "")]
    for child in plan.get("Plans", []):
        types += _node_types(child)
    return types


def explain(conn: psycopg.Connection, statement: str) -> dict:
    (result,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement).fetchone()
    top = result[0]
    plan = top["Plan"]
    return {
        "sql": statement,
        "planning_ms": round(top["Planning Time"], 3),
        "execution_ms": round(top["Execution Time"], 3),
        "indexes": sorted(_index_names(plan)),
        "nodes": _node_types(plan),
        "shared_hit_blocks": plan.get("Shared Hit Blocks"),
        "shared_read_blocks": plan.get("Shared Read Blocks"),
        "jit": "JIT" in top,
    }


def _raw_round(conn: psycopg.Connection, statements: list[str], requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        for statement in statements:
            conn.execute(statement).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _api_round(client, search: Search, headers: dict, requests: int) -> tuple[list[float], dict]:
    times, body = [], {}
    for _ in range(requests):
        started = time.perf_counter()
        if search.body is None:
            response = client.get(f"{BASE}/job", headers=headers)
        else:
            response = client.post(f"{BASE}/job/search", json=search.body, headers=headers)
        data = response.get_data()
        times.append((time.perf_counter() - started) * 1000)
        body = json.loads(data)
        if response.status_code != 200:
            raise RuntimeError(f"search {search.name} answered {response.status_code}: {body}")
    return times, body


def request_of(search: Search) -> tuple[str, str, bytes | None]:
    """The HTTP request of a search: method, path and body."""
    if search.body is None:
        return "GET", f"{BASE}/job", None
    return "POST", f"{BASE}/job/search", json.dumps(search.body).encode()


def served(
    settings: Settings, api_key: str, workdir: Path, chosen: list[Search], *, duration: float, runs: int
) -> dict:
    """Each search under load through gunicorn: req/s, latency and CPU per request (median of `runs` runs)."""
    use_wrk = api_load.load_generator() == "wrk"
    load = api_load.fixed_load(use_wrk)
    server, base = start_gunicorn("wsgi:app", settings_env(settings), workdir / "gunicorn-b2.log", api_load.HEALTH_PATH)
    meter = api_load.ServingCpu(server.pid, settings.database_url)
    figures = {}
    try:
        for search in chosen:
            method, path, body = request_of(search)
            load(base, method, path, body, api_key, 1, workdir)  # warm-up: the shape's statement is prepared
            measured = [
                api_load.measured(load, meter, base, method, path, body, api_key, duration, workdir)
                for _ in range(runs)
            ]
            if any(r["errors"] or r["non_2xx"] for r in measured):
                raise RuntimeError(f"B2 served {search.name} saw errors: {measured}")
            figures[search.name] = api_load.side_summary(measured)
    finally:
        meter.close()
        server.stop()
    return {
        "load_generator": f"wrk -t{api_load.WRK_THREADS} -c{api_load.CONNECTIONS}"
        if use_wrk
        else f"python ({api_load.CONNECTIONS} connections)",
        "duration_s": duration,
        "runs": runs,
        "searches": figures,
    }


def run(
    settings: Settings,
    api_key: str,
    workdir: Path,
    *,
    requests: int = 30,
    rounds: int = 3,
    warmup: int = 3,
    served_duration: float = 3,
    served_runs: int = 3,
) -> dict:
    """B2: p50/p95 of each search through the API and as raw SQL (median of `rounds` rounds of `requests`),
    then each served under load."""
    sha, customer = pick_targets(settings.database_url)
    headers = {"Argus-API-Key": api_key}
    results = {}
    raw_url = sa.make_url(settings.database_url)
    with (
        app_bound_to(settings) as app,
        psycopg.connect(
            host=raw_url.host,
            port=raw_url.port,
            user=raw_url.username,
            password=raw_url.password,
            dbname=raw_url.database,
            autocommit=True,
        ) as raw,
    ):
        client = app.test_client()
        for search in searches(sha, customer):
            statements = capture_statements(settings.database_url, search)
            _api_round(client, search, headers, warmup)
            _raw_round(raw, statements, warmup)
            api_rounds, raw_rounds, body = [], [], {}
            for _ in range(rounds):
                times, body = _api_round(client, search, headers, requests)
                api_rounds.append({"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)})
                times = _raw_round(raw, statements, requests)
                raw_rounds.append({"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)})
            plans = [explain(raw, statement) for statement in statements]
            api_p95 = median(r["p95_ms"] for r in api_rounds)
            raw_p95 = median(r["p95_ms"] for r in raw_rounds)
            results[search.name] = {
                "what": search.what,
                "body": search.body,
                "count": body.get("count"),
                "size": body.get("size"),
                "api_p50_ms": round(median(r["p50_ms"] for r in api_rounds), 3),
                "api_p95_ms": round(api_p95, 3),
                "raw_sql_p50_ms": round(median(r["p50_ms"] for r in raw_rounds), 3),
                "raw_sql_p95_ms": round(raw_p95, 3),
                "ratio_p95": round(api_p95 / raw_p95, 3) if raw_p95 else None,
                "explain_execution_ms": round(sum(p["execution_ms"] for p in plans), 3),
                "indexes": sorted({name for p in plans for name in p["indexes"]}),
                "plans": plans,
                "api_rounds": api_rounds,
                "raw_rounds": raw_rounds,
            }
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "sample_sha256": sha,
        "customer": customer,
        "searches": results,
        "served": served(
            settings, api_key, workdir, searches(sha, customer), duration=served_duration, runs=served_runs
        ),
    }
