"""§9.3 `sampledb-jobs status`: the figures of a running stack, exit 0 when healthy, 1 naming the reason; with
--check the monitoring plugins' levels (0 OK, 1 WARNING, 2 CRITICAL), with --json every figure and reason."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.clock import now_ms
from app.config import Settings
from app.operations.sweep_runs import periodic_intervals
from tests.support.waiting import wait_for

pytestmark = pytest.mark.committing  # status reads through an engine of its own

ROOT = Path(__file__).resolve().parents[1]
PERIODIC_INTERVALS = periodic_intervals(Settings.from_env({}))


@pytest.fixture
def status_env(database_url, redis_url, celery_broker_url, kafka_broker) -> dict:
    return {
        "SAMPLEDB_DATABASE_URL": database_url,
        "SAMPLEDB_REDIS_URL": redis_url,
        "SAMPLEDB_CELERY_BROKER_URL": celery_broker_url,
        "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.url,
    }


def status(env: dict, *args: str):
    return CliRunner().invoke(main, ["status", *args], env=env, catch_exceptions=False)


def run_periodic_tasks(task_sender, wait_idle) -> None:
    """Play beat: every periodic task once, through the worker."""
    for name in PERIODIC_INTERVALS:
        task_sender.send(name)
    wait_idle()


@pytest.mark.celery
def test_status_of_a_healthy_stack_exits_0(worker, task_sender, wait_idle, status_env, make_job, sql):
    make_job()
    run_periodic_tasks(task_sender, wait_idle)
    result = status(status_env)
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output and "UNHEALTHY" not in result.output
    for figure in (
        "jobs enqueued",
        "jobs executing",
        "jobs created, last minute",
        "jobs created, last hour",
        "outbox backlog",
        "outbox oldest unsent",
        "outbox parked",
        "dead submissions",
        "queue ingest",
        "queue outbox",
        "queue periodic",
        *PERIODIC_INTERVALS,
    ):
        assert figure in result.output, figure
    assert sql("SELECT count(*) FROM sweep_runs WHERE last_run_timestamp IS NOT NULL")[0][0] == len(PERIODIC_INTERVALS)


@pytest.mark.celery
def test_status_exits_1_naming_the_outbox_when_kafka_is_down(
    worker, task_sender, wait_idle, status_env, kafka_broker, make_job, sql
):
    if not kafka_broker.restartable:
        pytest.skip("needs the embedded broker, which the test can stop")
    run_periodic_tasks(task_sender, wait_idle)
    kafka_broker.stop()
    make_job()  # its messages cannot reach Kafka now
    created = sql("SELECT min(created_timestamp) FROM outbox WHERE sent_timestamp IS NULL")[0][0]
    wait_for(lambda: now_ms() - created > 1500, 10, "the outbox row to age past the threshold")
    result = status({**status_env, "SAMPLEDB_STATUS_OUTBOX_MAX_AGE_SECONDS": "1"})
    assert result.exit_code == 1, result.output
    assert "outbox: the oldest unsent row is" in result.output
    reasons = [line for line in result.output.splitlines() if line.startswith("- ")]
    assert len(reasons) == 1, reasons  # the sweeps ran, Redis answers: the outbox is the only reason
    # With the default threshold (60 s) the same stack is healthy.
    assert status(status_env).exit_code == 0


def test_status_exits_1_when_beat_never_scheduled_the_sweeps(status_env):
    result = status(status_env)
    assert result.exit_code == 1, result.output
    for name in PERIODIC_INTERVALS:
        assert f"{name}: never scheduled (is beat running?)" in result.output


def test_status_names_an_overdue_sweep(status_env, sql):
    now = now_ms()
    for name in PERIODIC_INTERVALS:
        sql(
            "INSERT INTO sweep_runs (name, expected_since_timestamp, last_run_timestamp, last_moved) "
            "VALUES (:name, :t, :t, 0)",
            name=name,
            t=now,
        )
    late = next(iter(PERIODIC_INTERVALS))
    sql(
        "UPDATE sweep_runs SET last_run_timestamp = :t WHERE name = :name",
        t=now - 4 * PERIODIC_INTERVALS[late] * 1000,
        name=late,
    )
    result = status(status_env)
    assert result.exit_code == 1, result.output
    assert f"{late}: last ran" in result.output and "more than 3 intervals" in result.output
    sql(
        "UPDATE sweep_runs SET last_run_timestamp = :t WHERE name = :name",
        t=now - 2 * PERIODIC_INTERVALS[late] * 1000,
        name=late,
    )
    assert status(status_env).exit_code == 0


def test_status_watch_refreshes_until_interrupted(status_env, sql, tmp_path):
    now = now_ms()
    for name in PERIODIC_INTERVALS:
        sql("INSERT INTO sweep_runs (name, expected_since_timestamp) VALUES (:name, :t)", name=name, t=now)
    # As in a terminal: rich redraws the view in place (cursor movements) instead of printing it once at the end.
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
        | status_env
        | {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    )
    output = tmp_path / "status.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "status", "--watch", "0.5"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: output.read_text().count("jobs created, last hour") >= 3, 60, "three refreshes")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    assert code == 0, output.read_text()[-2000:]
    assert "\x1b[" in output.read_text()  # redrawn in place


def test_beat_marks_the_periodic_tasks_expected_when_it_starts(database_url, redis_url, sql, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMPLEDB_", "CELERY_"))}
    env.update(SAMPLEDB_DATABASE_URL=database_url, SAMPLEDB_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    before = now_ms()
    with open(tmp_path / "beat.log", "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "beat",
                "--schedule",
                str(tmp_path / "schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: len(sql("SELECT name FROM sweep_runs")) == len(PERIODIC_INTERVALS),
            60,
            f"beat to mark the periodic tasks; its log:\n{(tmp_path / 'beat.log').read_text()[-2000:]}",
        )
    finally:
        beat.terminate()
        beat.wait(30)
    rows = sql("SELECT name, expected_since_timestamp, last_run_timestamp FROM sweep_runs")
    assert {r[0] for r in rows} == set(PERIODIC_INTERVALS)
    assert all(r[1] >= before and r[2] is None for r in rows)


def test_parked_rows_dead_submissions_and_a_long_queue_warn_a_silent_broker_is_critical():
    from app.operations import status as health
    from app.operations.vitals import Vitals

    now = now_ms()
    fresh = [health.PeriodicRun(name, interval, now, now, 0) for name, interval in PERIODIC_INTERVALS.items()]
    healthy = Vitals(
        jobs_active={"enqueued": 1, "executing": 0},
        outbox_backlog=3,
        outbox_oldest_unsent_age_seconds=59.0,
        outbox_parked=0,
        dead_submissions=0,
        queue_lengths={"ingest": 10_000, "outbox": 0, "periodic": 0},
    )

    def found_with(**changed) -> list:
        vitals = dataclasses.replace(healthy, **changed)
        return health.problems(health.Snapshot(now, vitals, 0, 0, fresh), Settings.from_env({}))

    found = found_with(outbox_parked=1, dead_submissions=2, queue_lengths=None)
    assert [(p.level.name, p.reason) for p in found] == [
        ("WARNING", "outbox: 1 parked rows wait for an operator"),
        ("WARNING", "submissions: 2 dead submissions are stored"),
        ("CRITICAL", "broker: the Celery broker does not answer"),
    ]
    assert health.level_of(found) is health.Level.CRITICAL
    found = found_with(dead_submissions=1, queue_lengths={"ingest": 10_001, "outbox": 0, "periodic": 0})
    assert [(p.level.name, p.reason) for p in found] == [
        ("WARNING", "submissions: 1 dead submissions are stored"),
        ("WARNING", "queue ingest: 10,001 messages wait (more than 10,000): too few workers?"),
    ]
    assert health.level_of(found) is health.Level.WARNING
    found = found_with()
    assert found == [] and health.level_of(found) is health.Level.OK


def _sweeps_ran(sql, now: int, late: str | None = None) -> None:
    """Every periodic task ran just now; `late` four of its intervals ago."""
    for name, interval in PERIODIC_INTERVALS.items():
        ran = now - 4 * interval * 1000 if name == late else now
        sql(
            "INSERT INTO sweep_runs (name, expected_since_timestamp, last_run_timestamp, last_moved) "
            "VALUES (:name, :t, :ran, 0)",
            name=name,
            t=now,
            ran=ran,
        )


def _store_dead(sql, now: int) -> None:
    sql(
        "INSERT INTO dead_submissions (payload_text, reason, error, attempts, first_seen, last_seen) "
        "VALUES ('{', 'invalid', 'not JSON', 1, :t, :t)",
        t=now,
    )


def test_check_levels_ok_then_a_dead_submission_warns_then_an_overdue_sweep_is_critical(status_env, sql):
    """Found from outside: one dead submission kept for inspection made status exit 1 "UNHEALTHY" for as long as
    it was stored, the same as a stopped relay. With --check a monitoring system tells them apart."""
    now = now_ms()
    _sweeps_ran(sql, now)
    result = status(status_env, "--check")
    assert (result.exit_code, result.output.split(" | ")[0]) == (0, "SAMPLEDB-JOBS OK - healthy"), result.output
    assert "dead_submissions=0;0" in result.output and "queue_ingest=0" in result.output

    _store_dead(sql, now)
    result = status(status_env, "--check")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("SAMPLEDB-JOBS WARNING - submissions: 1 dead submissions are stored |")
    assert status(status_env).exit_code == 1  # without --check: §9.3's 0 or 1

    late = next(iter(PERIODIC_INTERVALS))
    sql("DELETE FROM sweep_runs")
    _sweeps_ran(sql, now, late=late)
    result = status(status_env, "--check")
    assert result.exit_code == 2, result.output
    # The worst first: the overdue sweep, then the dead submission.
    assert result.output.startswith(f"SAMPLEDB-JOBS CRITICAL - {late}: last ran "), result.output
    assert "; submissions: 1 dead submissions are stored |" in result.output
    assert status(status_env).exit_code == 1


def test_status_json_holds_every_figure_and_reason(status_env, sql, make_job):
    now = now_ms()
    _sweeps_ran(sql, now)
    _store_dead(sql, now)
    result = status(status_env, "--json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["level"] == "WARNING"
    assert body["problems"] == [{"level": "WARNING", "reason": "submissions: 1 dead submissions are stored"}]
    assert body["figures"]["deadSubmissions"] == 1 and body["figures"]["outboxParked"] == 0
    assert set(body["figures"]["jobsActive"]) == {"enqueued", "executing"}
    assert set(body["figures"]["queueLengths"]) == {"ingest", "outbox", "periodic"}
    assert {run["task"] for run in body["periodic"]} == set(PERIODIC_INTERVALS)
    assert all(run["lastRun"] == now for run in body["periodic"])
    assert set(body["jobsCreated"]) == {"lastMinute", "lastHour"}
    assert body["scheduler"] is None  # no beat ever held the lease here
    assert status(status_env, "--json", "--check").exit_code == 1

    sql(
        "INSERT INTO scheduler_leases (name, holder, held_since_timestamp, expires_timestamp) "
        "VALUES ('beat', 'worker-2:4242:ab12cd34', :since, :until)",
        since=now - 60_000,
        until=now + 8_000,
    )
    body = json.loads(status(status_env, "--json").output)
    assert body["scheduler"] == {
        "holder": "worker-2:4242:ab12cd34",
        "heldSince": now - 60_000,
        "expiresAt": now + 8_000,
    }
    assert "worker-2:4242:ab12cd34, lease " in status(status_env).output


def test_check_is_critical_when_the_database_does_not_answer():
    from app.dev.processes import free_port

    closed = free_port()
    env = {
        "SAMPLEDB_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/sampledb",
        "SAMPLEDB_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
    }
    result = status(env, "--check")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("SAMPLEDB-JOBS CRITICAL - postgresql: cannot read the figures")
    body = json.loads(status(env, "--json").output)
    assert body["level"] == "CRITICAL" and body["figures"] is None


def test_status_names_an_unreachable_database_instead_of_crashing():
    from app.dev.processes import free_port

    closed = free_port()
    result = status(
        {
            "SAMPLEDB_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/sampledb",
            "SAMPLEDB_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        }
    )
    assert result.exit_code == 1, result.output
    assert "postgresql: cannot read the figures" in result.output
