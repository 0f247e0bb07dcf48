"""`sampledb-jobs dev` end to end: a fresh directory, readiness, a demo run, Ctrl-C, a restart that finds the jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from app.dev.processes import free_port

pytestmark = [pytest.mark.celery, pytest.mark.servers]  # starts a dev stack of its own

COMMAND = [sys.executable, "-m", "app.cli"]


def _start(directory: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, "dev"], cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_ready(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dev exited early:\n{process.stdout.read()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s")


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return output


def _count_jobs(api_url: str, key: str) -> int:
    request = urllib.request.Request(
        f"{api_url}/sampledb/v2/job/search",
        method="POST",
        data=json.dumps({"state": [], "limit": 1}).encode(),
        headers={"Argus-API-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["count"]


@pytest.fixture
def dev_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    env.update(
        SAMPLEDB_API_PORT=str(free_port()),
        SAMPLEDB_FLOWER_PORT=str(free_port()),
        SAMPLEDB_WORKER_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def test_dev_runs_the_whole_service_stops_cleanly_and_keeps_its_data(tmp_path, dev_env):
    api_url = f"http://127.0.0.1:{dev_env['SAMPLEDB_API_PORT']}"
    process = _start(tmp_path, dev_env)
    try:
        _wait_ready(process, f"{api_url}/sampledb/v2/readyz")
        tree = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]
        assert len(tree) > 5  # servers, gunicorn, worker, beat, flower

        dev_env_file = (tmp_path / ".sampledb" / "dev.env").read_text()
        for name in (
            "SAMPLEDB_DATABASE_URL",
            "SAMPLEDB_REDIS_URL",
            "SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS",
            "SAMPLEDB_API_URL",
            "SAMPLEDB_FLOWER_URL",
            "SAMPLEDB_FLOWER_BASIC_AUTH",
        ):
            assert f"{name}=" in dev_env_file

        # A second start in the same directory says so and leaves the first one alone.
        second = subprocess.run(
            [*COMMAND, "dev"], cwd=tmp_path, env=dev_env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "already running" in second.stderr
        assert process.poll() is None

        # The demo, run in the stack's directory, talks to the stack without any setting.
        demo = subprocess.run(
            [*COMMAND, "demo", "--submissions", "20", "--seed", "1"],
            cwd=tmp_path,
            env=dev_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "creation messages seen" in demo.stdout
        key = (tmp_path / ".sampledb" / "dev.key").read_text().strip()
        assert _count_jobs(api_url, key) == 20
        # Both metrics endpoints answer: the web app's and the worker's, whose pool made the 20 jobs.
        metrics_url = f"http://127.0.0.1:{dev_env['SAMPLEDB_WORKER_METRICS_PORT']}/metrics"
        for url in (f"{api_url}/metrics", metrics_url):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            assert 'sampledb_submissions_total{outcome="created"} 20.0' in response.read().decode()
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
    assert "All-customers SAMPLEDB-ANALYZER key" in output
    assert f"{api_url}/metrics" in output and f":{dev_env['SAMPLEDB_WORKER_METRICS_PORT']}/metrics" in output
    time.sleep(1)
    left = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left behind: {left}"

    # A restart finds the earlier jobs (PostgreSQL's data lives under .sampledb/).
    process = _start(tmp_path, dev_env)
    try:
        _wait_ready(process, f"{api_url}/sampledb/v2/readyz")
        assert _count_jobs(api_url, key) == 20
        _second_beat_schedules_nothing(tmp_path, dev_env, process)
    finally:
        _stop(process)
    assert process.returncode == 0


def _second_beat_schedules_nothing(directory: Path, env: dict, stack: subprocess.Popen) -> None:
    """A second `celery beat` started beside the stack's (a second scheduler host by mistake) sends nothing
    for longer than the lease while the stack's beat lives (SPEC 13.1)."""
    import sqlalchemy as sa

    database_url = next(
        line.split("=", 1)[1]
        for line in (directory / ".sampledb" / "dev.env").read_text().splitlines()
        if line.startswith("SAMPLEDB_DATABASE_URL=")
    )
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))

    def holder() -> str | None:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT holder FROM scheduler_leases WHERE name = 'beat'")).scalar()

    stack_pids = {c.pid for c in psutil.Process(stack.pid).children(recursive=True)}
    deadline = time.monotonic() + 60
    while not (holder() and int(holder().split(":")[1]) in stack_pids):
        assert time.monotonic() < deadline, f"the stack's beat never took the scheduler lease (holder {holder()})"
        time.sleep(0.5)
    held_by = holder()
    log_path = directory / "second-beat.log"
    with open(log_path, "wb") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "-l", "info"]
            + ["--schedule", str(directory / "second-beat-schedule")],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(10)  # longer than the lease (8 s): time enough to take it, had the stack's beat let it lapse
        assert second.poll() is None, log_path.read_text()
    finally:
        second.terminate()
        second.wait(30)
        engine.dispose()
    output = log_path.read_text()
    assert "beat: Starting..." in output, output
    assert "Sending due task" not in output, f"the second beat scheduled beside the stack's:\n{output}"
    assert holder() == held_by


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_dev_leaves_no_process_behind(tmp_path, dev_env, sig):
    """SIGTERM stops the stack in order; SIGKILL cannot be caught, and still nothing it started outlives it."""
    process = _start(tmp_path, dev_env)
    try:
        _wait_ready(process, f"http://127.0.0.1:{dev_env['SAMPLEDB_API_PORT']}/sampledb/v2/readyz")
        started = psutil.Process(process.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert len(started) > 5 and {"postgres", "redis-server"} <= names, names
    finally:
        process.send_signal(sig)
        process.communicate(timeout=60)
    time.sleep(10)
    left = []
    for child in started:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    assert left == [], f"still running 10 s after {sig.name}: {left}"
