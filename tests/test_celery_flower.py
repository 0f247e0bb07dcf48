"""Flower monitors the worker: its HTTP API lists the worker and the sampledb.* tasks it ran."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.dev import commands
from app.dev.processes import Child, free_port
from celeryconfig import TaskNames
from tests.support.payloads import submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

ROOT = Path(__file__).resolve().parents[1]
BASIC_AUTH = "flower-admin:s3cret-for-tests"


@pytest.fixture
def flower(celery_worker, tmp_path):
    """Flower as the Procfile runs it: basic auth on, the worker's broker."""
    port = free_port()
    process = Child("flower", tmp_path / "flower.log").start(
        commands.flower("--address=127.0.0.1", f"--port={port}", f"--basic-auth={BASIC_AUTH}"),
        env=celery_worker.env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str, auth: str | None = BASIC_AUTH, timeout: float = 10):
        request = urllib.request.Request(base + path)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def up(left: float) -> bool:
        get("/api/workers?refresh=false", timeout=2)
        return True

    process.wait_until(up, 30, "answering on its HTTP API")
    yield get
    process.stop(10)


def test_flower_lists_the_worker_and_its_tasks(worker, flower, task_sender, wait_idle):
    with pytest.raises(urllib.error.HTTPError) as refused:
        flower("/api/workers", auth=None)
    assert refused.value.code == 401

    workers = wait_for(lambda: flower("/api/workers?refresh=true"), 30, "the worker in /api/workers", interval=0.5)
    node = worker.hostname.replace("%h", "")
    (name,) = [n for n in workers if n.startswith(node)]
    queues = {q["name"] for q in workers[name].get("active_queues", [])}
    assert queues == {"ingest", "outbox", "periodic"}
    registered = set(workers[name].get("registered", []))
    assert {TaskNames.INGEST_SUBMISSION, TaskNames.RELAY_OUTBOX, TaskNames.SWEEP_EXECUTION_TIMEOUTS} <= registered

    # Flower sees the tasks that run while it listens to the worker's events.
    wanted = {
        TaskNames.INGEST_SUBMISSION,
        TaskNames.RELAY_OUTBOX,
        TaskNames.SWEEP_EXECUTION_TIMEOUTS,
        TaskNames.SWEEP_ENQUEUED_TIMEOUTS,
        TaskNames.SWEEP_UNCONFIRMED_ABORTS,
    }

    def seen() -> bool:
        task_sender.send(TaskNames.INGEST_SUBMISSION, submission_payload())
        for sweep in (
            TaskNames.SWEEP_EXECUTION_TIMEOUTS,
            TaskNames.SWEEP_ENQUEUED_TIMEOUTS,
            TaskNames.SWEEP_UNCONFIRMED_ABORTS,
        ):
            task_sender.send(sweep)
        tasks = flower("/api/tasks")
        done = {
            t["name"] for t in tasks.values() if t.get("state") == "SUCCESS" and t.get("worker", "").startswith(node)
        }
        return wanted <= done

    wait_for(seen, 30, "the sampledb tasks in /api/tasks", interval=1)
    wait_idle()
    ingests = flower(f"/api/tasks?taskname={TaskNames.INGEST_SUBMISSION}&state=SUCCESS")
    assert ingests and all(t["name"] == TaskNames.INGEST_SUBMISSION for t in ingests.values())
    assert all(t["received"] and t["succeeded"] for t in ingests.values())
