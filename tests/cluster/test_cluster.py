"""Faults across hosts (SPEC 13, 14), on a cluster of network namespaces (tests/cluster/harness.py):
a "servers" host (PostgreSQL, Redis, the Kafka-protocol broker), two API hosts (gunicorn), two worker
hosts (a Celery worker with its relay, and a beat, on each), and the client the test works from.

Run with `make test-cluster` (root: it makes network namespaces). Each scenario prints its figures.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime

import pytest
import sqlalchemy as sa

from app.dev.kafka import read_topic, start_kafka
from app.dev.postgres import start_postgres
from app.dev.redis import start_redis
from app.dev.synthetic import random_submission
from app.intake.ingest import job_id_for
from app.operations.migrate import upgrade
from app.task_names import TaskNames
from tests.cluster import harness
from tests.support.celery_worker import TaskSender, service_env
from tests.support.waiting import wait_for

HOSTS = ["servers", "api1", "api2", "worker1", "worker2", "client"]
API_HOSTS = ("api1", "api2")
WORKER_HOSTS = ("worker1", "worker2")
JOB_TOPIC = "Sample.Analysis.Job.OSL"
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"
INTERVAL_SECONDS = 3  # of every periodic task here
LEASE_SECONDS = 5
VISIBILITY_SECONDS = 20  # a cut-off worker's messages go to the other worker after this long
# worker2's clock runs five minutes ahead (libfaketime, wall clock only) in every scenario; an executing job
# silent for four minutes times out, so a host that used its own clock would time every executing job out.
# 25 ms ± 10 ms each way (a round trip 50 ms ± 20 ms longer) and 1 % of chunks 200 ms late (a lost segment
# sent again), between api1 and the servers, while a scenario wants it.
SLOW_LINK = {"delay": 0.025, "jitter": 0.010, "loss": 0.01, "retransmit": 0.2}
SKEWED_HOST = "worker2"
EXECUTION_TIMEOUT_SECONDS = 240
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
# Its monotonic clock moves by the same constant, which changes no duration. (With
# FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10 makes every time.sleep fail with EINVAL: beat died.)
SKEWED_CLOCK = {"LD_PRELOAD": LIBFAKETIME[0] if LIBFAKETIME else "", "FAKETIME": "+5m"}


class Site:
    def __init__(self, cluster: harness.Cluster, database_url: str, redis_url: str, kafka_url: str):
        self.cluster, self.database_url, self.redis_url, self.kafka_url = cluster, database_url, redis_url, kafka_url
        self.api_urls = [f"http://{cluster.address(host)}:8000/sampledb/v2" for host in API_HOSTS]
        with cluster.inside("client"):
            self.engine = sa.create_engine(database_url, pool_size=2)
            self.sender = TaskSender(redis_url)
        self.key = ""
        self.analyzer_key = ""
        self.slow_links: list[harness.SlowLink] = []

    def sql(self, statement: str, **params):
        with self.cluster.inside("client"), self.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else None

    def request(self, url: str, method: str, body: dict | None, key: str) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Argus-API-Key": key, "Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


def _start_site(cluster: harness.Cluster) -> Site:
    servers = cluster.address("servers")
    with cluster.inside("servers"):
        postgres = start_postgres(cluster.directory / "postgres", port=5432, host=servers)
        redis_server = start_redis(cluster.directory / "redis", port=6379, host=servers)
        kafka = start_kafka(port=9092, log_dir=cluster.directory / "kafka", host=servers)
    cluster.hosts["servers"].processes += [postgres, redis_server, kafka]
    with cluster.inside("client"):
        upgrade(postgres.url)
    intervals = {
        f"SAMPLEDB_{name}_INTERVAL_SECONDS": str(INTERVAL_SECONDS)
        for name in ("SWEEP", "OUTBOX_RELAY", "PENDING_INGEST", "PURGE")
    }
    env = service_env(
        postgres.url,
        redis_server.url,
        kafka.url,
        SAMPLEDB_SCHEDULER_LEASE_SECONDS=str(LEASE_SECONDS),
        SAMPLEDB_CELERY_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_SECONDS),
        SAMPLEDB_EXECUTION_TIMEOUT_SECONDS=str(EXECUTION_TIMEOUT_SECONDS),
        **intervals,
    )
    site = Site(cluster, postgres.url, redis_server.url, kafka.url)
    # api1 reaches PostgreSQL and Redis over a link that a scenario makes slow (SLOW_LINK).
    with cluster.inside("servers"):
        site.slow_links = [
            harness.SlowLink((servers, port + 10000), (servers, port), **SLOW_LINK) for port in (5432, 6379)
        ]
    slow_env = {
        **env,
        "SAMPLEDB_DATABASE_URL": postgres.url.replace(":5432/", ":15432/"),
        "SAMPLEDB_REDIS_URL": redis_server.url.replace(":6379/", ":16379/"),
        "SAMPLEDB_CELERY_BROKER_URL": redis_server.url.replace(":6379/", ":16379/"),
    }
    for host in API_HOSTS:
        cluster.start(host, "gunicorn", harness.gunicorn(cluster.address(host)), slow_env if host == "api1" else env)
    for host in WORKER_HOSTS:
        host_env = {**env, **(SKEWED_CLOCK if host == SKEWED_HOST else {})}
        cluster.start(host, "worker", harness.worker(host), host_env)
        cluster.start(host, "beat", harness.beat(cluster.directory, host), host_env)
    with cluster.inside("client"):
        for url in site.api_urls:
            wait_for(lambda url=url: _answers(f"{url}/readyz"), 90, f"{url} ready")
    for host in WORKER_HOSTS:
        worker = cluster.hosts[host].processes[0]
        worker.wait_until(lambda left, worker=worker: " ready." in worker.output(), 90, "ready")
    site.key = _make_key(site, "SAMPLEDB-UPLOADER", "uploader", "acme")
    site.analyzer_key = _make_key(site, "SAMPLEDB-ANALYZER", "analyzer", "mnemonic", all_customers=True)
    return site


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _make_key(site: Site, role: str, user: str, customer: str, **options) -> str:
    from app.accounts.keys import create_key
    from app.extensions import db
    from app.factory import create_app
    from app.unit_of_work import unit_of_work
    from tests.support.settings import make_settings

    with site.cluster.inside("client"):
        app = create_app(make_settings(site.database_url))
        with app.app_context(), unit_of_work(db.session) as session:
            secret = create_key(session, user=user, customer=customer, role=role, **options)
        db.engine_of(app).dispose()
    return secret


@pytest.fixture(scope="module")
def site():
    if os.geteuid() != 0:
        pytest.fail("the cluster harness makes network namespaces: run it as root (`make test-cluster`)")
    if not LIBFAKETIME:
        pytest.fail("the cluster's skewed worker host needs libfaketime (apt-get install faketime; .ci/run does)")
    cluster = harness.Cluster(HOSTS).build()
    try:
        yield _start_site(cluster)
    finally:
        cluster.close()


def _beat_pid(holder: str | None) -> int | None:
    return int(holder.split(":")[1]) if holder else None


def _beat_host(site: Site) -> str | None:
    holder = site.sql("SELECT holder FROM scheduler_leases WHERE name = 'beat'")
    pid = _beat_pid(holder[0][0] if holder else None)
    for host in WORKER_HOSTS:
        if any(child.pid == pid for child in site.cluster.hosts[host].processes):
            return host
    return None


def _rest_submission(rng_seed: int) -> tuple[str, dict]:
    payload = random_submission(random.Random(rng_seed), customer="acme")
    submission = {k: v for k, v in payload["submission"].items() if k in ("id", "name", "mimeType", "tlp", "metaData")}
    classification = {
        k: payload["classification"][k]
        for k in ("type", "superType", "arch", "platform")
        if k in payload["classification"]
    }
    return payload["submission"]["sample"]["id"], {"submission": submission, "classification": classification}


def _submit_rest(
    site: Site,
    url: str,
    seeds: list[int],
    accepted: list[str],
    failures: collections.Counter,
    latencies: list[float] | None = None,
) -> None:
    for seed in seeds:
        sha256, body = _rest_submission(seed)
        for _attempt in range(20):  # a client retries with the same submission id until it has its 202
            try:
                sent = time.monotonic()
                status, answer = site.request(f"{url}/sample/{sha256}/submission", "POST", body, site.key)
                if latencies is not None:
                    latencies.append(time.monotonic() - sent)
            except OSError:
                failures["connection"] += 1
                time.sleep(0.5)
                continue
            if status == 202:
                accepted.append(answer["data"]["jobID"])
                break
            failures[status] += 1
            time.sleep(0.5)


ROLES = {"gunicorn": "web", "worker": "worker", "beat": "beat", "postgresql": "PostgreSQL", "redis": "Redis"}


def _by_role(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used: dict[str, float] = collections.defaultdict(float)
    for name, seconds in after.items():
        role = ROLES.get(name.split("/", 1)[1], "Kafka broker")
        used[role] += seconds - before.get(name, 0.0)
    return dict(used)


def _made(site: Site, job_ids: list[str]) -> int:
    """How many of these jobs exist."""
    return site.sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0]


def _ingest_state(site: Site, job_ids: list[str]) -> str:
    """Where submissions not yet made are, for a failure message: the broker's ingest queue, the messages
    delivered and not acknowledged, whether a restore of them is under way (kombu's mutex), REST submissions
    not yet taken, dead ones."""
    import redis

    with site.cluster.inside("client"):
        broker = redis.Redis.from_url(site.redis_url)
        state = {
            "made": _made(site, job_ids),
            "queued": broker.llen("ingest"),
            "unacknowledged": broker.hlen("unacked"),
            "restore mutex held": bool(broker.exists("unacked_mutex")),
            "pending REST": site.sql("SELECT count(*) FROM pending_submissions")[0][0],
            "dead": site.sql("SELECT count(*) FROM dead_submissions")[0][0],
        }
        broker.close()
    return f"{state}; logs in {site.cluster.directory}"


def _wait_relayed(site: Site, timeout: float, interval: float = 0.2) -> None:
    wait_for(
        lambda: site.sql("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL")[0][0] == 0,
        timeout,
        "every outbox message relayed",
        interval=interval,
    )


def _all_made_and_announced(site: Site, job_ids: list[str], timeout: float) -> None:
    wait_for(lambda: _made(site, job_ids) == len(job_ids), timeout, f"{len(job_ids)} jobs", interval=0.2)
    _wait_relayed(site, timeout)


def test_cpu_per_submission_on_each_role(site):
    """The capacity model's figures (docs/DEPLOYMENT.md, "How many hosts"): CPU per submission, summed over
    each role's processes on every host, for 2,000 REST submissions (over both API hosts) and for 2,000 on
    the Celery path, each from the first request until every job is made and announced."""
    rng = random.Random(21)
    lines = []
    for path in ("REST", "Celery"):
        failures: collections.Counter = collections.Counter()
        before = site.cluster.cpu_seconds()
        started = time.monotonic()
        if path == "REST":
            accepted: list[str] = []
            seeds = [rng.randrange(10**9) for _ in range(2000)]
            with site.cluster.inside("client"), concurrent.futures.ThreadPoolExecutor(16) as pool:
                clients = [
                    pool.submit(_submit_rest, site, site.api_urls[i % 2], seeds[i::16], accepted, failures)
                    for i in range(16)
                ]
                for client in clients:
                    client.result()
            job_ids = accepted
        else:
            payloads = [random_submission(rng, customer="acme") for _ in range(2000)]
            job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
            with site.cluster.inside("client"):
                site.sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
        assert len(job_ids) == 2000, f"{len(job_ids)} of 2000 accepted: {failures}"
        _all_made_and_announced(site, job_ids, 300)
        seconds = time.monotonic() - started
        used = _by_role(before, site.cluster.cpu_seconds())
        per_job = {role: 1000 * cpu / len(job_ids) for role, cpu in sorted(used.items())}
        lines.append(
            f"{path}: 2,000 submissions made and announced in {seconds:.1f} s ({2000 / seconds:.0f}/s); CPU ms per "
            "submission: "
            + ", ".join(f"{role} {ms:.2f}" for role, ms in per_job.items())
            + f", all {sum(per_job.values()):.2f}"
        )
        assert site.sql("SELECT count(*) FROM dead_submissions")[0][0] == 0
    print("\n" + "\n".join(lines))


@pytest.mark.timeout(900)
def test_a_worker_host_cut_off_mid_burst_loses_nothing_and_doubles_nothing(site):
    """Scenario: worker1's link cut for 30 s in the middle of 2,000 submissions (half REST over both API
    hosts, half Celery messages): one job per submission, one creation message per job, none dead."""
    rest_count, celery_count = 1000, 1000
    rest_jobs: list[str] = []
    failures: collections.Counter = collections.Counter()
    rng = random.Random(19)
    celery_payloads = [random_submission(rng, customer="acme") for _ in range(celery_count)]
    celery_jobs = [str(job_id_for(p["submission"]["id"])) for p in celery_payloads]

    def rest_load() -> None:
        with site.cluster.inside("client"), concurrent.futures.ThreadPoolExecutor(8) as pool:
            seeds = list(range(100_000, 100_000 + rest_count))
            clients = [
                pool.submit(_submit_rest, site, site.api_urls[i % 2], seeds[i::8], rest_jobs, failures)
                for i in range(8)
            ]
            for client in clients:
                client.result()

    def celery_load() -> None:
        with site.cluster.inside("client"):
            for start in range(0, celery_count, 50):
                site.sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in celery_payloads[start : start + 50]])
                time.sleep(0.1)

    errors: list[BaseException] = []

    def running(load):
        def run() -> None:
            try:
                load()
            except BaseException as err:  # seen by the test below
                errors.append(err)

        return threading.Thread(target=run)

    loads = [running(rest_load), running(celery_load)]
    for load in loads:
        load.start()
    time.sleep(3)
    site.cluster.cut("worker1")
    cut_at = time.monotonic()
    time.sleep(30)
    site.cluster.plug("worker1")
    for load in loads:
        load.join(300)
    sent_at_end = time.monotonic() - cut_at
    assert not errors, errors
    assert len(rest_jobs) == rest_count, f"{len(rest_jobs)} of {rest_count} REST submissions accepted: {failures}"
    job_ids = sorted(set(rest_jobs) | set(celery_jobs))
    assert len(job_ids) == rest_count + celery_count

    wait_for(
        lambda: _made(site, job_ids) == len(job_ids),
        300,
        lambda: f"{len(job_ids)} jobs ({_ingest_state(site, job_ids)})",
        interval=1,
    )
    _wait_relayed(site, 120, interval=1)
    made_at = time.monotonic() - cut_at
    dead = site.sql("SELECT count(*) FROM dead_submissions")[0][0]
    with site.cluster.inside("client"):
        records = [r for r in read_topic(site.kafka_url, JOB_TOPIC, timeout=30) if r.key.decode() in set(job_ids)]
    event_ids = collections.defaultdict(set)
    for record in records:
        event_ids[record.key.decode()].add(dict(record.headers)["event-id"])
    per_job = collections.Counter(record.key.decode() for record in records)
    repeated = sum(count - 1 for count in per_job.values())
    announced_twice = sum(1 for ids in event_ids.values() if len(ids) > 1)
    print(
        f"\nworker host cut 30 s mid-burst: sent {len(job_ids)} ({rest_count} REST over 2 API hosts, "
        f"{celery_count} Celery), jobs made {_made(site, job_ids)}, dead {dead}, creation messages {len(records)} "
        f"(repeats of one event-id {repeated}, jobs announced under two event-ids {announced_twice}), "
        f"REST retries {dict(failures)}; load sent by {sent_at_end:.0f} s, every job made and announced "
        f"{made_at:.0f} s after the cut"
    )
    assert dead == 0
    assert set(event_ids) == set(job_ids), f"{len(set(job_ids) - set(event_ids))} jobs never announced"
    assert announced_twice == 0


def test_a_slow_lossy_link_between_an_api_host_and_the_servers_adds_latency_and_no_error(site):
    """Scenario: api1's link to PostgreSQL and Redis 50 ms ± 20 ms longer a round trip, 1 % of its chunks
    200 ms late (harness.SlowLink: this kernel has no netem); 400 REST submissions to each API host from 4
    clients each: no 5xx, every job made, and the latency the link adds, from api2 beside it."""
    for link in site.slow_links:
        link.slow = True
    try:
        rng = random.Random(22)
        results = {}
        for index, host in enumerate(API_HOSTS):
            accepted: list[str] = []
            failures: collections.Counter = collections.Counter()
            latencies: list[float] = []
            seeds = [rng.randrange(10**9) for _ in range(400)]
            with site.cluster.inside("client"), concurrent.futures.ThreadPoolExecutor(4) as pool:
                clients = [
                    pool.submit(_submit_rest, site, site.api_urls[index], seeds[i::4], accepted, failures, latencies)
                    for i in range(4)
                ]
                for client in clients:
                    client.result()
            results[host] = (accepted, failures, sorted(latencies))
    finally:
        for link in site.slow_links:
            link.slow = False
    job_ids = [job for accepted, _, _ in results.values() for job in accepted]
    _all_made_and_announced(site, job_ids, 120)

    def ms(values: list[float], q: float) -> float:
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]

    print(
        "\nslow, lossy link api1 ↔ servers (round trip +50 ± 20 ms, 1 % of chunks +200 ms): "
        + "; ".join(
            f"{host}: {len(accepted)} accepted, errors {dict(failures)}, 202 p50 {ms(lat, 0.5):.0f} ms "
            f"p99 {ms(lat, 0.99):.0f} ms"
            for host, (accepted, failures, lat) in results.items()
        )
        + f"; added by the link: p50 {ms(results['api1'][2], 0.5) - ms(results['api2'][2], 0.5):+.0f} ms, "
        f"p99 {ms(results['api1'][2], 0.99) - ms(results['api2'][2], 0.99):+.0f} ms; every job made and announced"
    )
    for host, (accepted, failures, _) in results.items():
        assert len(accepted) == 400 and not failures, f"{host}: {len(accepted)} accepted, {dict(failures)}"
    assert ms(results["api1"][2], 0.5) > ms(results["api2"][2], 0.5), "the link was not slow"


def _database_now_ms(site: Site) -> int:
    return site.sql("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")[0][0]


def test_relays_on_both_worker_hosts_keep_each_jobs_messages_in_order_and_a_skewed_clock_changes_nothing(site):
    """Scenario: 300 jobs, each moved to executing and then done through both API hosts while both worker
    hosts relay (their relay tasks race for the outbox); worker2's clock is five minutes ahead all along.
    Every job's messages reach Kafka in its history's order, no executing job times out early (on worker2's
    clock each is past the 4-minute timeout), and no timestamp in any answer is later than the database's
    clock."""
    skewed = site.cluster.hosts[SKEWED_HOST].processes[0]
    # Its latest log line carries its wall clock: the skew is in force.
    stamps = re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ", skewed.output())
    assert stamps and (datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S") - datetime.now()).total_seconds() > 240

    rng = random.Random(20)
    payloads = [random_submission(rng, customer="acme") for _ in range(300)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    with site.cluster.inside("client"):
        site.sender.send_many(TaskNames.INGEST_SUBMISSION, [[p] for p in payloads])
    wait_for(
        lambda: _made(site, job_ids) == 300,
        120,
        "300 jobs",
        interval=0.5,
    )
    refused: collections.Counter = collections.Counter()

    def move(state: str, index_and_job: tuple[int, str]) -> None:
        index, job_id = index_and_job
        url = site.api_urls[index % 2]
        status, _ = site.request(f"{url}/job/{job_id}", "PUT", {"state": state}, site.analyzer_key)
        if status != 200:
            refused[(state, status)] += 1

    with site.cluster.inside("client"), concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: move("executing", item), enumerate(job_ids)))
        time.sleep(4 * INTERVAL_SECONDS)  # several execution-timeout sweeps, from either worker host
        list(pool.map(lambda item: move("done", item), enumerate(job_ids)))
    _wait_relayed(site, 120, interval=0.5)
    states = dict(
        site.sql("SELECT state, count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY state", ids=job_ids)
    )
    with site.cluster.inside("client"):
        records = collections.defaultdict(lambda: collections.defaultdict(list))
        for topic in (JOB_TOPIC, EVENT_TOPIC):
            for record in read_topic(site.kafka_url, topic, timeout=30):
                if record.key.decode() in set(job_ids):
                    records[record.key.decode()][topic].append(record)
    violations = 0
    with site.cluster.inside("client"):
        for job_id in job_ids:
            status, answer = site.request(f"{site.api_urls[0]}/job/{job_id}/history", "GET", None, site.analyzer_key)
            history = [(e["fromState"], e["toState"]) for e in answer["data"] if e["taskID"] is None]
            events = [
                (json.loads(r.value)["fromState"], json.loads(r.value)["toState"]) for r in records[job_id][EVENT_TOPIC]
            ]
            creations = records[job_id][JOB_TOPIC]
            if (
                events != history
                or len(creations) != 1
                or creations[0].timestamp
                > min((r.timestamp for r in records[job_id][EVENT_TOPIC]), default=creations[0].timestamp)
            ):
                violations += 1
    read_at = _database_now_ms(site)
    latest = 0
    with site.cluster.inside("client"):
        for index, job_id in enumerate(job_ids[:50]):
            status, answer = site.request(f"{site.api_urls[index % 2]}/job/{job_id}", "GET", None, site.analyzer_key)
            assert status == 200
            latest = max([latest] + [v for k, v in answer["data"].items() if k.endswith("Timestamp") and v])
    latest_record = max(r.timestamp for topics in records.values() for rs in topics.values() for r in rs)
    stored_latest = site.sql(
        "SELECT max(greatest(enqueued_timestamp, last_updated_timestamp, coalesce(end_timestamp, 0))) FROM jobs"
    )[0][0]
    print(
        f"\nrelays on both worker hosts, {SKEWED_HOST}'s clock 5 min ahead: 300 jobs moved executing → done over "
        f"both API hosts, states {states}, refused updates {dict(refused)}, order violations {violations}; "
        f"latest timestamp in an answer {latest - read_at:+d} ms, stored {stored_latest - read_at:+d} ms, "
        f"on a Kafka record {latest_record - read_at:+d} ms from the database's clock"
    )
    assert states == {"done": 300}, "a job timed out early or did not end"
    assert not refused
    assert violations == 0
    assert latest <= read_at and stored_latest <= read_at
    assert latest_record <= read_at, "a relay wrote its host's clock into a Kafka record"


def test_the_scheduler_host_killed_another_schedules_within_three_intervals(site):
    """Scenario: every process of the host whose beat holds the lease SIGKILLed: the other host's beat
    takes the lease, and the sweeps, `ingest_pending` and the relay's safety net run again."""
    holder_host = wait_for(lambda: _beat_host(site), 30, "a beat holding the scheduler lease")
    other = next(host for host in WORKER_HOSTS if host != holder_host)
    # A row no commit triggered a relay for: only beat's safety net sends it.
    job_id = str(uuid.uuid4())
    killed_at_ms = _database_now_ms(site)
    site.cluster.kill(holder_host)
    killed_at = time.monotonic()
    site.sql(
        "INSERT INTO outbox (event_id, topic, key, value, created_timestamp, attempts, next_attempt_timestamp) "
        "VALUES (:event_id, :topic, :key, CAST(:value AS jsonb), :now, 0, 0)",
        event_id=str(uuid.uuid4()),
        topic=EVENT_TOPIC,
        key=job_id,
        value=json.dumps({"jobID": job_id, "probe": "safety net"}),
        now=killed_at_ms,
    )
    wait_for(lambda: _beat_host(site) == other, 3 * INTERVAL_SECONDS + LEASE_SECONDS, f"{other}'s beat to take over")
    take_over = time.monotonic() - killed_at

    def ran_again() -> bool:
        rows = site.sql("SELECT name, last_run_timestamp FROM sweep_runs")
        return len(rows) == 5 and all((last or 0) > killed_at_ms for _, last in rows)

    wait_for(
        ran_again, 3 * INTERVAL_SECONDS + LEASE_SECONDS + 10, "every periodic task run after the kill", interval=0.5
    )
    periodic_again = time.monotonic() - killed_at
    wait_for(
        lambda: site.sql("SELECT sent_timestamp FROM outbox WHERE key = :k", k=job_id)[0][0] is not None,
        3 * INTERVAL_SECONDS + LEASE_SECONDS + 10,
        "the safety net to relay the row",
        interval=0.5,
    )
    relayed = time.monotonic() - killed_at
    print(
        f"\nscheduler host {holder_host} killed: lease taken over by {other} after {take_over:.1f} s "
        f"(lease {LEASE_SECONDS} s), every periodic task ran again after {periodic_again:.1f} s, "
        f"the safety net relayed an untriggered row after {relayed:.1f} s (interval {INTERVAL_SECONDS} s)"
    )
    assert take_over <= 2 * INTERVAL_SECONDS + 1, f"the take-over took {take_over:.1f} s"
    assert periodic_again <= 3 * INTERVAL_SECONDS, f"the periodic tasks ran again only after {periodic_again:.1f} s"
