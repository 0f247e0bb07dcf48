"""The test harness itself: API tests are rolled back, and the fast lane starts no server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _count(sql, table: str) -> int:
    return sql(f"SELECT count(*) FROM {table}")[0][0]


def test_an_api_test_runs_in_a_transaction_rolled_back_after_it(database, make_key, make_job, api, sql):
    assert database is not None  # not a `committing` test
    headers = make_key("VIEWER")
    job_id = make_job()
    assert api.get(f"/job/{job_id}", headers=headers)["data"]["id"] == job_id  # the view sees the test's data
    assert _count(sql, "jobs") == 1


def test_the_next_test_starts_from_a_fresh_installation(sql):
    assert _count(sql, "jobs") == _count(sql, "api_keys") == _count(sql, "customers") == 0
    assert _count(sql, "analysis_workers") > 0  # the workers the migrations registered


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    env["TESTS_START_NO_SERVERS"] = "1"  # as `make test-fast` runs: a server start fails the test
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_fast_lane_starts_no_server():
    fast = _pytest("-m", "not servers", "-k", "not fast_lane", "tests/test_dev_commands.py", "tests/test_harness.py")
    assert fast.returncode == 0, fast.stdout[-3000:]
    assert " passed" in fast.stdout and "deselected" in fast.stdout  # the database tests of this file

    # A test that needs the database is left out of it, not run without one: run anyway, it fails.
    forced = _pytest("tests/test_harness.py::test_the_next_test_starts_from_a_fresh_installation")
    assert forced.returncode != 0
    assert "this session may start no server" in forced.stdout
