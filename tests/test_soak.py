"""`make soak` for half a minute: the harness starts `sampledb-jobs dev`, loads it with simulated analyzers,
samples every process and checks every job, and writes its results and chart.

The soak's stack is always embedded here (its own PostgreSQL, Redis and Kafka-protocol broker, on free
ports): `sampledb-jobs dev` migrates the database it is given, and a lane's given URL is a shared server's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.soak import REPO, slope_per_10k

pytestmark = pytest.mark.servers


def test_the_slope_is_megabytes_per_ten_thousand_submissions():
    assert slope_per_10k([(0, 100.0), (5_000, 105.0), (10_000, 110.0)]) == pytest.approx(10.0)
    assert slope_per_10k([(0, 100.0), (10_000, 100.0)]) == pytest.approx(0.0)
    assert slope_per_10k([(0, 100.0)]) is None


def test_a_short_soak_loses_nothing_and_writes_its_results(tmp_path):
    results, chart = tmp_path / "soak.json", tmp_path / "soak-rss.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    env.update(
        SOAK_MINUTES="0.5",
        SOAK_RATE="5",
        SOAK_SAMPLE_SECONDS="5",
        SOAK_WARMUP_MINUTES="0.1",
        SOAK_RESULTS=str(results),
        SOAK_CHART=str(chart),
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak"], cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(results.read_text())

    checks = data["checks"]
    accepted = checks["submissionsAccepted"]
    assert accepted >= 140  # 5/s for 30 s, give or take the last second
    # Both intakes: every other submission went as a sampledb.ingest_submission message, the others over REST.
    assert abs(checks["submissionsSentAsCeleryMessages"] - accepted / 2) <= 2, checks
    assert checks["lostJobs"] == checks["duplicatedJobs"] == 0
    assert checks["jobsNotAnnounced"] == checks["creationMessagesDuplicated"] == 0
    assert checks["submissionsRefusedOrFailed"] == checks["clientServerErrors"] == checks["apiServerErrors"] == 0
    assert checks["states"] == {"done": accepted - 1, "aborted": 1}

    assert len(data["samples"]) >= 5
    assert [s["submissions"] for s in data["samples"]] == sorted(s["submissions"] for s in data["samples"])
    for role in ("web worker 1", "celery main", "celery pool 1", "beat", "flower"):
        assert data["processes"][role]["peakMB"] > 10, role
        assert data["processes"][role]["slopeMBPer10kSubmissions"] is not None, role
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert "slope after" in done.stdout
