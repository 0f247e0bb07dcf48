"""§9.2 metrics, read back with prometheus_client's own parser: the web app's /metrics (in this process
and under real gunicorn with two workers, summed) and the Celery worker's port (summed over its pool)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app.clock import now_ms
from app.dev import commands
from app.dev.processes import free_port
from app.factory import create_app
from celeryconfig import TaskNames
from tests.support.api import check_envelope
from tests.support.payloads import SAMPLE_SHA256, submission_payload
from tests.support.settings import make_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.committing  # the apps under test read through engines of their own

ROOT = Path(__file__).resolve().parents[1]
JOB_ROUTE = "/sampledb/v2/job/<job_id>"
# Every series of the §9.2 table, as sample names.
SERIES = {
    "sampledb_http_requests_total",
    "sampledb_http_request_duration_seconds_bucket",
    "sampledb_jobs_active",
    "sampledb_outbox_backlog",
    "sampledb_outbox_oldest_unsent_age_seconds",
    "sampledb_outbox_parked",
    "sampledb_dead_submissions",
    "sampledb_celery_queue_length",
    "sampledb_submissions_total",
    "sampledb_job_transitions_total",
    "sampledb_outbox_sent_total",
    "sampledb_outbox_send_failures_total",
    "sampledb_purged_rows_total",
}
WEB_SERIES = SERIES - {
    "sampledb_submissions_total",
    "sampledb_outbox_sent_total",
    "sampledb_outbox_send_failures_total",
    "sampledb_purged_rows_total",
}


class Scrape:
    """The samples of one Prometheus text exposition."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def value(self, name: str, **labels) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self) -> set[str]:
        return {value for s in self.samples for value in s.labels.values()}


def scrape_url(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())


def scrape_client(client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain", response.get_data()[:300]
    return Scrape(response.get_data(as_text=True))


@pytest.fixture
def quiet_redis_url(redis_url):
    """A Redis database no worker consumes: queue lengths stay as the test left them."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_metrics_count_api_calls_by_url_rule_and_gauges_equal_the_sql_counts(
    database_url, quiet_redis_url, make_job, make_key, sql
):
    app = create_app(
        make_settings(database_url, SAMPLEDB_REDIS_URL=quiet_redis_url, SAMPLEDB_METRICS_CACHE_SECONDS="0")
    )
    client = app.test_client()
    customer = f"metrics-{uuid.uuid4().hex[:8]}"
    headers = make_key("ANALYZER", customer=customer, user=f"user-{customer}")
    jobs = [make_job(customer=customer) for _ in range(5)]
    before = scrape_client(client)

    calls = 7
    for i in range(calls):
        check_envelope(client.get(f"/sampledb/v2/job/{jobs[i % len(jobs)]}", headers=headers), 200)
    check_envelope(client.put(f"/sampledb/v2/job/{jobs[0]}", headers=headers, json={"state": "executing"}), 200)
    check_envelope(client.put(f"/sampledb/v2/job/{jobs[1]}", headers=headers, json={"state": "failed"}), 200)
    check_envelope(client.get(f"/sampledb/v2/no/such/{SAMPLE_SHA256}", headers=headers), 404)
    import redis

    queues = redis.Redis.from_url(quiet_redis_url)
    queues.lpush("ingest", *["m"] * 3)
    queues.lpush("periodic", "m")
    # The PUTs' commits sent relay tasks to this broker too: what is waiting is what LLEN says.
    waiting = {q: queues.llen(q) for q in ("ingest", "outbox", "periodic")}
    queues.close()
    sql("UPDATE outbox SET sent_timestamp = :t WHERE id IN (SELECT min(id) FROM outbox)", t=now_ms())
    oldest = sql("SELECT min(created_timestamp) FROM outbox WHERE sent_timestamp IS NULL")[0][0]
    read_from = now_ms()
    after = scrape_client(client)
    read_to = now_ms()

    def moved(name: str, **labels) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert after.names() >= WEB_SERIES, WEB_SERIES - after.names()
    assert moved("sampledb_http_requests_total", method="GET", route=JOB_ROUTE, status="200") == calls
    assert moved("sampledb_http_request_duration_seconds_count", method="GET", route=JOB_ROUTE) == calls
    assert moved("sampledb_http_requests_total", method="PUT", route=JOB_ROUTE, status="200") == 2
    assert moved("sampledb_http_requests_total", route="unmatched", status="404") == 1
    assert moved("sampledb_job_transitions_total", from_state="enqueued", to_state="executing", cause="api") == 1
    assert moved("sampledb_job_transitions_total", from_state="enqueued", to_state="failed", cause="api") == 1

    counts = dict(sql("SELECT state, count(*) FROM jobs WHERE state IN ('enqueued', 'executing') GROUP BY state"))
    assert after.value("sampledb_jobs_active", state="enqueued") == counts.get("enqueued", 0) == 3
    assert after.value("sampledb_jobs_active", state="executing") == counts.get("executing", 0) == 1
    backlog = sql("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL")[0][0]
    assert after.value("sampledb_outbox_backlog") == backlog > 0
    age = after.value("sampledb_outbox_oldest_unsent_age_seconds")
    assert (read_from - oldest) / 1000 <= age <= (read_to - oldest) / 1000
    assert after.value("sampledb_outbox_parked") == 0 and after.value("sampledb_dead_submissions") == 0
    assert {q: after.value("sampledb_celery_queue_length", queue=q) for q in waiting} == waiting
    assert (waiting["ingest"], waiting["periodic"]) == (3, 1)

    # No customer, user, key, job id or hash in any label.
    secret = headers["Argus-API-Key"]
    for value in after.label_values():
        for forbidden in (customer, f"user-{customer}", secret, SAMPLE_SHA256, *jobs):
            assert forbidden not in value, (forbidden, value)


def test_the_oldest_unsent_age_is_zero_without_a_backlog(database_url, quiet_redis_url):
    app = create_app(
        make_settings(database_url, SAMPLEDB_REDIS_URL=quiet_redis_url, SAMPLEDB_METRICS_CACHE_SECONDS="0")
    )
    scrape = scrape_client(app.test_client())
    assert scrape.value("sampledb_outbox_oldest_unsent_age_seconds") == 0
    assert scrape.value("sampledb_outbox_backlog") == 0


def test_metrics_can_be_turned_off(database_url):
    app = create_app(make_settings(database_url, SAMPLEDB_METRICS_ENABLED="false"))
    response = app.test_client().get("/metrics")
    check_envelope(response, 404)


@pytest.mark.celery
def test_worker_port_sums_its_pool_processes(worker, task_sender, wait_idle, live_api, sql):
    before = scrape_url(worker.metrics_url)
    log_offset = len(worker.output())
    payloads = [submission_payload(customer=f"acme-{uuid.uuid4().hex[:6]}") for _ in range(24)]
    for payload in payloads:
        task_sender.send(TaskNames.INGEST_SUBMISSION, payload)
    task_sender.send(TaskNames.INGEST_SUBMISSION, payloads[0])  # a repeat: the existing job
    task_sender.send(TaskNames.INGEST_SUBMISSION, {"submission": {}})  # invalid
    wait_idle()
    assert sql("SELECT count(*) FROM jobs")[0][0] == len(payloads)
    # An expired sent row and a stale executing job, for the purge and the sweep.
    sql("UPDATE outbox SET sent_timestamp = :t WHERE id IN (SELECT min(id) FROM outbox)", t=now_ms() - 48 * 3600_000)
    sql("UPDATE jobs SET state = 'executing', last_updated_timestamp = 0 WHERE id IN (SELECT id FROM jobs LIMIT 2)")
    task_sender.send(TaskNames.PURGE)
    task_sender.send(TaskNames.SWEEP_EXECUTION_TIMEOUTS)
    wait_idle()
    after = scrape_url(worker.metrics_url)

    def moved(name: str, **labels) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # Both pool processes ingested: the port's figures are their sum.
    ingest_log = worker.output()[log_offset:]
    assert "ForkPoolWorker-1" in ingest_log and "ForkPoolWorker-2" in ingest_log, ingest_log[-2000:]
    assert moved("sampledb_submissions_total", outcome="created") == len(payloads)
    assert moved("sampledb_submissions_total", outcome="existing") == 1
    assert moved("sampledb_submissions_total", outcome="invalid") == 1
    assert moved("sampledb_purged_rows_total", table="outbox") == 1
    assert moved("sampledb_job_transitions_total", from_state="executing", to_state="timeout", cause="sweep") == 2
    # Every row now in the outbox was relayed during this test, plus the purged one.
    sent = sql("SELECT count(*) FROM outbox WHERE sent_timestamp IS NOT NULL")[0][0]
    assert moved("sampledb_outbox_sent_total") == sent + 1
    assert {
        "sampledb_submissions_total",
        "sampledb_outbox_sent_total",
        "sampledb_outbox_send_failures_total",
        "sampledb_purged_rows_total",
        "sampledb_job_transitions_total",
    } <= after.names()
    for value in after.label_values():
        assert not any(p["submission"]["customer"] in value or p["submission"]["id"] in value for p in payloads)
        assert SAMPLE_SHA256 not in value
    runs = dict(sql("SELECT name, last_moved FROM sweep_runs"))
    assert runs[TaskNames.PURGE] == 1 and runs[TaskNames.SWEEP_EXECUTION_TIMEOUTS] == 2


@pytest.mark.celery
def test_web_metrics_under_gunicorn_sum_both_workers(
    worker_settings, database_url, redis_url, celery_broker_url, make_key, make_job, tmp_path
):
    port = free_port()
    metrics_dir = tmp_path / "web-metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "PROMETHEUS_"))}
    env.update(
        SAMPLEDB_DATABASE_URL=database_url,
        SAMPLEDB_REDIS_URL=redis_url,
        SAMPLEDB_CELERY_BROKER_URL=celery_broker_url,
        SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS=worker_settings.kafka_bootstrap_servers,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        # As the Procfile runs it: the gunicorn config, two workers.
        server = subprocess.Popen(
            commands.gunicorn("app.factory:create_app()", f"127.0.0.1:{port}"),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"{base}/sampledb/v2/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(
            up, 60, f"gunicorn; its log:\n{log_path.read_text()[-2000:] if log_path.exists() else ''}", interval=0.2
        )
        job_id = make_job()
        headers = make_key("VIEWER")

        def counter_files() -> list[Path]:
            return sorted(metrics_dir.glob("counter_*.db"))

        wait_for(lambda: len(counter_files()) == 2, 60, "both gunicorn workers to load the app")
        assert not (metrics_dir / "counter_1.db").exists()  # the leftover of an earlier run was cleared

        def served_by_each() -> list[float]:
            """Job requests each worker counted, read from its own file alone."""
            counts = []
            for path in counter_files():
                alone = tmp_path / f"alone-{path.stem}"
                alone.mkdir(exist_ok=True)
                shutil.copy(path, alone / path.name)
                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=str(alone))
                counts.append(
                    Scrape(generate_latest(registry).decode()).value("sampledb_http_requests_total", route=JOB_ROUTE)
                )
            return counts

        def get_job() -> None:
            request = urllib.request.Request(f"{base}/sampledb/v2/job/{job_id}", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200

        calls = 0
        with ThreadPoolExecutor(8) as pool:  # concurrent connections, until both workers have served some
            while calls < 400 and not all(served_by_each()):
                list(pool.map(lambda _: get_job(), range(16)))
                calls += 16
        assert all(served_by_each()) and sum(served_by_each()) == calls
        for _ in range(6):  # whichever worker answers the scrape, it reports the sum
            scrape = scrape_url(f"{base}/metrics")
            assert scrape.value("sampledb_http_requests_total", method="GET", route=JOB_ROUTE, status="200") == calls
            assert scrape.value("sampledb_http_request_duration_seconds_count", route=JOB_ROUTE) == calls
        assert scrape.names() >= WEB_SERIES, WEB_SERIES - scrape.names()
        assert job_id not in scrape.text
    finally:
        server.terminate()
        server.wait(30)


def test_parked_rows_and_dead_submissions_are_counted(database_url, quiet_redis_url, make_job, sql):
    app = create_app(
        make_settings(database_url, SAMPLEDB_REDIS_URL=quiet_redis_url, SAMPLEDB_METRICS_CACHE_SECONDS="0")
    )
    make_job()
    make_job()
    scrape = scrape_client(app.test_client())
    assert (scrape.value("sampledb_outbox_parked"), scrape.value("sampledb_dead_submissions")) == (0, 0)
    sql("UPDATE outbox SET parked_timestamp = 1 WHERE id IN (SELECT min(id) FROM outbox)")
    for error in ("first", "second"):
        sql(
            "INSERT INTO dead_submissions (payload, reason, error, attempts, first_seen, last_seen) "
            "VALUES ('{}'::jsonb, 'invalid', :error, 1, 1, 1)",
            error=error,
        )
    scrape = scrape_client(app.test_client())
    assert (scrape.value("sampledb_outbox_parked"), scrape.value("sampledb_dead_submissions")) == (1, 2)


def test_a_stale_reading_is_answered_at_once_and_read_again_in_the_background():
    """The service gauges' cache (a unit test of the collector, with a counting reader)."""
    import threading

    from app.operations.metrics import ServiceGauges
    from app.operations.vitals import Vitals

    reads, release = [], threading.Event()

    def read() -> Vitals:
        if reads:
            release.wait(30)  # a later reading takes as long as the test wants
        reads.append(1)
        return Vitals({"enqueued": len(reads), "executing": 0}, 0, 0.0, 0, 0, None)

    def enqueued(gauges) -> float:
        family = next(f for f in gauges.collect() if f.name == "sampledb_jobs_active")
        return next(s.value for s in family.samples if s.labels == {"state": "enqueued"})

    gauges = ServiceGauges(read, cache_seconds=0.05)
    assert enqueued(gauges) == 1  # the first scrape reads and waits
    wait_for(lambda: len(reads) == 1 and enqueued(gauges) == 1 and gauges._refreshing, 10, "a stale reading")
    assert enqueued(gauges) == 1 and len(reads) == 1  # answered from the old reading while the new one runs
    release.set()
    wait_for(lambda: enqueued(gauges) == 2, 10, "the background reading")
    assert len(reads) >= 2


def test_a_scrape_racing_a_process_that_just_created_its_file_still_answers(tmp_path):
    """Fault (found with the suite on given servers): /metrics answered 500, struct.error in prometheus-client's
    multiprocess collector, on the file of a process that had created it but not yet written its header."""
    code = f"""
import os, sys
from app.operations import metrics
metrics.enable_multiprocess({str(tmp_path)!r})
metrics.count_submissions(None, "created", 3)
open(os.path.join({str(tmp_path)!r}, "counter_999999.db"), "wb").close()  # a starting process's file
from prometheus_client import generate_latest
sys.stdout.write(generate_latest(metrics.process_registry()).decode())
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(result.stdout)
        for s in family.samples
    }
    assert samples[("sampledb_submissions_total", "created")] == 3


def test_each_periodic_task_reports_its_interval_and_how_long_ago_it_ran(database_url, quiet_redis_url, sql):
    """What the alert "a sweep not run for three intervals" reads (deploy/prometheus/)."""
    from app.config import Settings
    from app.operations.sweep_runs import periodic_intervals

    app = create_app(
        make_settings(database_url, SAMPLEDB_REDIS_URL=quiet_redis_url, SAMPLEDB_METRICS_CACHE_SECONDS="0")
    )
    intervals = periodic_intervals(Settings.from_env({}))
    assert "sampledb_periodic_task_last_run_age_seconds" not in scrape_client(app.test_client()).names()
    now = now_ms()
    ran, never_ran = list(intervals)[:2]
    sql(
        "INSERT INTO sweep_runs (name, expected_since_timestamp, last_run_timestamp, last_moved) "
        "VALUES (:ran, :t, :ago, 0), (:never, :t, NULL, NULL)",
        ran=ran,
        never=never_ran,
        t=now - 600_000,
        ago=now - 120_000,
    )
    scrape = scrape_client(app.test_client())
    assert scrape.value("sampledb_periodic_task_interval_seconds", task=ran) == intervals[ran]
    assert 120 <= scrape.value("sampledb_periodic_task_last_run_age_seconds", task=ran) < 130
    assert 600 <= scrape.value("sampledb_periodic_task_last_run_age_seconds", task=never_ran) < 610
    third = list(intervals)[2]  # beat never scheduled it here: no series (status names it)
    assert not [s for s in scrape.samples if s.labels.get("task") == third]
