"""The shipped Prometheus rules (deploy/prometheus/): valid, every alert unit-tested by `promtool test rules` both
firing and quiet, and every series they read is one the service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = RULES_DIR / "sampledb-jobs.rules.yml"
RULE_TESTS = RULES_DIR / "sampledb-jobs.rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


def _alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_the_rules_are_valid_and_their_unit_tests_pass():
    checked = _promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    example = _promtool("check", "config", "prometheus.yml")  # the example scrape configuration, with the rules
    assert example.returncode == 0, example.stdout + example.stderr
    tested = _promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_a_wrong_expectation_fails_promtool(tmp_path):
    """The control: promtool compares the alerts exactly, so the suite above can fail."""
    for path in (RULES, RULE_TESTS):
        shutil.copy(path, tmp_path / path.name)
    broken = tmp_path / RULE_TESTS.name
    broken.write_text(broken.read_text().replace("4m 30s old", "4m 31s old"))
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", broken.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "SampledbOutboxStalled" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet():
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for alert in _alerts():
        name = alert["alert"]
        assert sorted(set(cases.get(name, []))) == [False, True], f"{name}: needs a firing and a quiet case"
        assert alert["labels"]["severity"] in {"warning", "critical"}, name


@pytest.mark.committing  # the app reads sweep_runs through an engine of its own
def test_every_series_the_rules_read_is_exported(database_url, redis_url, sql):
    """A renamed series would leave an alert that never fires: each name in an expression is in a scrape."""
    from app.clock import now_ms
    from app.factory import create_app
    from app.operations.sweep_runs import periodic_intervals
    from tests.support.settings import make_settings

    now = now_ms()
    for name in periodic_intervals(make_settings(database_url)):
        sql("INSERT INTO sweep_runs (name, expected_since_timestamp) VALUES (:n, :t)", n=name, t=now)
    app = create_app(make_settings(database_url, SAMPLEDB_REDIS_URL=redis_url, SAMPLEDB_METRICS_CACHE_SECONDS="0"))
    client = app.test_client()
    client.get("/sampledb/v2/job/00000000-0000-0000-0000-000000000000")  # one request: the HTTP series exist
    exported = client.get("/metrics").get_data(as_text=True)
    groups = yaml.safe_load(RULES.read_text())["groups"]
    used = {name for group in groups for rule in group["rules"] for name in re.findall(r"\bsampledb_\w+", rule["expr"])}
    assert used, "no series found in the rules"
    missing = {name for name in used if not re.search(rf"^{name}[{{ ]", exported, re.MULTILINE)}
    assert not missing, missing
