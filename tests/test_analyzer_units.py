"""Unit tests of the analyzer package's parts; end to end on real servers: tests/test_analyzer.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from analyzer import Runner
from analyzer.topics import OffsetTracker
from tests.support.analyzers import Recording


def test_the_offset_commit_stops_at_the_lowest_unfinished_record():
    from kafka import TopicPartition

    tracker = OffsetTracker()
    tp = TopicPartition("Sample.Analysis.Job.OSL", 0)
    tokens = {offset: tracker.started(tp, offset) for offset in (10, 11, 12)}
    tracker.finished(tp, 11, tokens[11])
    tracker.finished(tp, 12, tokens[12])
    assert tracker.to_commit() == {tp: 10}
    tracker.finished(tp, 10, tokens[10])
    assert tracker.to_commit() == {tp: 13}
    tracker.committed({tp: 13})
    assert tracker.to_commit() == {}
    # After the partition went away and came back, a late finish of the old start does not end the new one.
    tracker.forget([tp])
    again = tracker.started(tp, 13)
    tracker.finished(tp, 13, object())
    assert tracker.to_commit() == {tp: 13} and tracker.in_flight() == 1
    tracker.finished(tp, 13, again)
    assert tracker.to_commit() == {tp: 14}


def test_the_analyzer_package_imports_without_the_service():
    code = (
        "import sys, analyzer, analyzer.runner, analyzer.command, analyzer.simulate\n"
        "from analyzer import Analyzer, Runner, Client\n"
        "loaded = sorted(m for m in ('flask', 'sqlalchemy', 'celery', 'app') if m in sys.modules)\n"
        "assert 'kafka' in sys.modules\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


class _HistoryClaimedElsewhere:
    """The API as a runner sees it when another instance's claim landed first: the task is
    enqueued at the GET, the PUT succeeds (a heartbeat of the other's claim), the history
    names the other instance."""

    def __init__(self, job: dict):
        self.job, self.puts = job, []

    def get_job(self, job_id):
        return self.job

    def update_task(self, job_id, task_id, state, **fields):
        self.puts.append(state)
        return {}

    def job_history(self, job_id):
        return [
            {
                "taskID": self.job["tasks"][0]["id"],
                "fromState": "enqueued",
                "toState": "executing",
                "message": "Claimed by analyzer static-analyzer on another host",
            }
        ]


def test_a_claim_another_instance_made_first_is_left_to_it():
    job = {
        "id": "5f0c6c36-5b9c-4b8e-9a43-0d2a4a1c7f11",
        "flags": [],
        "analysedSample": {"id": "aa" * 32},
        "tasks": [{"id": "3c0d8a5e-1d2f-4f55-8a8e-6b8d5b0f2a10", "worker": "static-analyzer", "state": "enqueued"}],
    }
    analyzer = Recording("static-analyzer")
    runner = Runner(analyzer, api_url="http://127.0.0.1:1", api_key="unused", bootstrap_servers="127.0.0.1:1")
    runner.client = _HistoryClaimedElsewhere(job)
    runner._analyse_task(("partition", 0, None), job["id"], job["tasks"][0]["id"], {"jobID": job["id"]})
    assert runner.client.puts == ["executing"]  # the claim, and no report after it
    assert analyzer.calls == {} and runner.counts["skipped"] == 1


def test_the_cli_refuses_a_program_that_does_not_exist():
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(
        main,
        [
            "analyzer",
            "run",
            "--worker",
            "static-analyzer",
            "--api-url",
            "http://127.0.0.1:1",
            "--api-key",
            "unused",
            "--",
            "no-such-analysis-tool",
        ],
    )
    assert result.exit_code == 1 and "no-such-analysis-tool: no such program" in result.output
