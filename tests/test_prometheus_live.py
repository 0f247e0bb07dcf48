"""A real Prometheus (Debian's `prometheus`) scrapes the running service's web and worker endpoints with the
shipped rules (deploy/prometheus/): Kafka stops, jobs wait in the outbox and SampledbOutboxStalled goes from
inactive to firing, read from Prometheus' own API; Kafka back, it resolves. The alert's threshold and `for`
are shortened from 60 s and 2 min to seconds in the test's copy of the rules: the expressions are the shipped
ones."""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.dev.processes import Child, free_port
from celeryconfig import TaskNames
from tests.support.analyzers import ApiServer
from tests.support.waiting import wait_for

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "sampledb-jobs.rules.yml"
PROMETHEUS = shutil.which("prometheus")
ALERT = "SampledbOutboxStalled"

pytestmark = [
    pytest.mark.celery,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)"
    ),
]


def _quick_rules(directory: Path) -> Path:
    """The shipped rules, the outbox alert past 2 s for 2 s instead of past 60 s for 2 min."""
    rules = yaml.safe_load(RULES.read_text())
    (alert,) = [rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == ALERT]
    assert alert["expr"].endswith("> 60") and alert["for"] == "2m"  # what is shortened
    alert["expr"], alert["for"] = alert["expr"].removesuffix("> 60") + "> 2", "2s"
    path = directory / RULES.name
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, str]):
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(_quick_rules(directory))],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.child = Child("prometheus", directory / "prometheus.log")
        self.argv = [
            str(PROMETHEUS),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]

    def start(self) -> Prometheus:
        self.child.start(self.argv)
        self.child.wait_until(lambda left: self.get("/-/ready", raw=True) == "ready", 60)
        return self

    def get(self, path: str, raw: bool = False, **params):
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except OSError:
            return None
        return "ready" if raw and "Ready" in body else (body if raw else json.loads(body)["data"])

    def alert_state(self, name: str) -> str:
        """inactive, pending or firing, as Prometheus' rules API reports the alert."""
        groups = self.get("/api/v1/rules", type="alert")["groups"]
        (rule,) = [r for g in groups for r in g["rules"] if r["name"] == name]
        assert rule["health"] == "ok", rule
        return rule["state"]

    def rules(self) -> list[dict]:
        return [r for g in self.get("/api/v1/rules")["groups"] for r in g["rules"]]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]


@pytest.fixture
def prometheus(celery_worker, database_url, redis_url, celery_broker_url, kafka_broker, tmp_path):
    api = ApiServer(
        tmp_path / "gunicorn.log",
        database_url=database_url,
        redis_url=redis_url,
        broker_url=celery_broker_url,
        kafka_url=kafka_broker.url,
    )
    api.env["SAMPLEDB_METRICS_CACHE_SECONDS"] = "0"
    api.start()
    worker_target = urllib.parse.urlsplit(celery_worker.metrics_url).netloc
    server = Prometheus(
        tmp_path,
        {"sampledb-jobs-web": api.url.removeprefix("http://"), "sampledb-jobs-worker": worker_target},
    ).start()
    yield server
    server.child.stop()
    api.stop()


def test_the_outbox_alert_fires_while_kafka_is_down_and_resolves_when_it_is_back(
    prometheus, kafka_broker, make_job, task_sender, wait_idle, sql
):
    if not kafka_broker.restartable:
        pytest.skip("needs the embedded broker, which the test can stop")
    wait_for(
        lambda: (
            {r["metric"]["job"] for r in prometheus.query("up == 1")} == {"sampledb-jobs-web", "sampledb-jobs-worker"}
        ),
        30,
        "both targets scraped",
    )
    wait_for(lambda: prometheus.query("sampledb:outbox_backlog:max"), 30, "the recording rules evaluated")
    # Every shipped rule loaded and evaluates cleanly against the real series.
    rules = prometheus.rules()
    assert len(rules) == len([r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]])
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    assert prometheus.alert_state(ALERT) == "inactive"

    kafka_broker.stop()
    try:
        make_job()  # its creation message waits in the outbox
        wait_for(lambda: prometheus.alert_state(ALERT) == "firing", 60, f"{ALERT} firing", interval=0.5)
        firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == ALERT]
        assert [(a["state"], a["labels"]["severity"]) for a in firing] == [("firing", "critical")], firing
    finally:
        kafka_broker.start()
    task_sender.send(TaskNames.RELAY_OUTBOX)  # as beat would: the relay sends what waited
    wait_idle()
    assert sql("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL")[0][0] == 0
    wait_for(lambda: prometheus.alert_state(ALERT) == "inactive", 60, f"{ALERT} resolved", interval=0.5)


DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "sampledb-jobs.json"


def test_every_dashboard_expression_parses_and_returns_data(prometheus, task_sender, wait_idle, make_job):
    """deploy/grafana/sampledb-jobs.json: each panel's query, asked of the Prometheus that scrapes the service."""
    from app.config import Settings
    from app.operations.sweep_runs import periodic_intervals

    make_job()
    for name in periodic_intervals(Settings.from_env({})):  # play beat: each periodic task once
        task_sender.send(name)
    wait_idle()
    expressions = [
        target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]
    ]
    assert len(expressions) >= 10

    empty = list(expressions)

    def answered() -> bool:
        empty[:] = [expr for expr in expressions if not prometheus.query(expr)]
        return not empty

    try:
        wait_for(answered, 60, "data for every panel", interval=1)
    finally:
        print("panels without data:", empty)
