"""The analyzer side (§12) end to end: the API over HTTP (gunicorn), the Kafka-protocol broker,
a real Celery worker making and announcing the jobs, analyzers in threads and as the CLI.
Unit tests of its parts: tests/test_analyzer_units.py."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from analyzer import Analyzer, Runner
from app.intake.ingest import job_id_for
from celeryconfig import TaskNames
from tests.support.analyzers import (
    ApiServer,
    Recording,
    claims_per_task,
    client_env,
    running,
    sweep_execution_timeouts,
)
from tests.support.payloads import submission_payload
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

CLI = [sys.executable, "-m", "app.cli"]
# Two tasks per job: a Windows PE gets the static analyzer and the Windows sandbox of the default set.
WORKERS = ("sandbox-windows", "static-analyzer")
EXECUTION_TIMEOUT = 2  # seconds, for the sweeps these tests run


@pytest.fixture(scope="module")
def api_server(celery_worker, database_url, redis_url, celery_broker_url, kafka_broker, tmp_path_factory):
    server = ApiServer(
        tmp_path_factory.mktemp("api") / "gunicorn.log",
        database_url=database_url,
        redis_url=redis_url,
        broker_url=celery_broker_url,
        kafka_url=kafka_broker.url,
    ).start()
    yield server
    server.stop()


@pytest.fixture
def analyzer_key(make_key) -> str:
    return make_key("ANALYZER", customer="acme", user="analysis-system", all_customers=True)["Argus-API-Key"]


@pytest.fixture
def make_runner(api_server, analyzer_key, kafka_broker):
    def make(analyzer: Analyzer, **options) -> Runner:
        options.setdefault("heartbeat_seconds", 0.5)
        return Runner(
            analyzer,
            api_url=api_server.url,
            api_key=analyzer_key,
            bootstrap_servers=kafka_broker.url,
            site="OSL",
            **options,
        )

    return make


@pytest.fixture
def ingest(task_sender, sql):
    """ingest(payloads) -> job ids, once the worker made every job (it announces them right after)."""

    def run(payloads: list[dict]) -> list[str]:
        task_sender.send(TaskNames.INGEST_SUBMISSIONS, payloads)
        job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
        wait_for(
            lambda: (
                sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)[0][0] == len(job_ids)
            ),
            60,
            f"{len(job_ids)} jobs made",
        )
        return job_ids

    return run


def task_states(sql, job_id: str) -> dict[str, str]:
    return dict(sql("SELECT worker, state FROM job_tasks WHERE job_id = CAST(:id AS uuid)", id=job_id))


def job_state(sql, job_id: str) -> str:
    return sql("SELECT state FROM jobs WHERE id = CAST(:id AS uuid)", id=job_id)[0][0]


def test_two_hundred_jobs_two_analyzers_per_worker_each_task_once(
    worker, api_server, make_runner, ingest, sql, live_app, worker_settings, live_api, analyzer_key
):
    headers = {"Argus-API-Key": analyzer_key}
    # A job another analysis system already works on: its tasks are claimed before our analyzers run.
    (elsewhere,) = ingest([submission_payload()])
    for task in live_api.get(f"/job/{elsewhere}", headers=headers)["data"]["tasks"]:
        live_api.put(
            f"/job/{elsewhere}/task/{task['id']}",
            headers=headers,
            json={"state": "executing", "message": "claimed by a silent analyzer"},
        )

    payloads = [submission_payload(customer=f"acme-{i % 4}") for i in range(200)]
    job_ids = [str(job_id_for(p["submission"]["id"])) for p in payloads]
    slow = job_ids[0]
    analyzers = {
        name: [
            Recording(name, hold=lambda job_id, held=(name == "static-analyzer"): held and job_id == slow)
            for _ in range(2)
        ]
        for name in WORKERS
    }
    runners = [make_runner(a, concurrency=4) for pair in analyzers.values() for a in pair]
    with running(*runners):
        ingest(payloads)
        others = set(job_ids) - {slow}
        wait_for(
            lambda: (
                sql(
                    "SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) AND state = 'done'",
                    ids=list(others),
                )[0][0]
                == len(others)
            ),
            180,
            f"the other 199 jobs done; states: {dict(sql('SELECT state, count(*) FROM jobs GROUP BY state'))}",
        )
        assert task_states(sql, slow) == {"static-analyzer": "executing", "sandbox-windows": "success"}
        started = sql(
            "SELECT start_timestamp FROM job_tasks WHERE job_id = CAST(:id AS uuid) AND worker = 'static-analyzer'",
            id=slow,
        )[0][0]

        # The slow analysis outlives the execution timeout while the sweep runs again and again.
        def swept_past_timeout() -> bool:
            sweep_execution_timeouts(live_app, worker_settings, EXECUTION_TIMEOUT)
            return job_state(sql, slow) != "executing" or (
                sql("SELECT last_updated_timestamp FROM jobs WHERE id = CAST(:id AS uuid)", id=slow)[0][0]
                > started + 3 * EXECUTION_TIMEOUT * 1000
            )

        wait_for(swept_past_timeout, 60, "the slow analysis to run three execution timeouts", interval=0.2)
        assert job_state(sql, slow) == "executing", "heartbeats should have kept the slow job from timing out"
        task = live_api.get(f"/job/{slow}", headers=headers)["data"]["tasks"]
        (static_task,) = [t for t in task if t["worker"] == "static-analyzer"]
        assert static_task["state"] == "executing"
        assert static_task["lastUpdatedTimestamp"] > static_task["startTimestamp"] + EXECUTION_TIMEOUT * 1000
        # The same sweep does time out a job whose analyzer went silent.
        assert job_state(sql, elsewhere) == "timeout"

        for analyzer in analyzers["static-analyzer"]:
            analyzer.release.set()
        wait_for(lambda: job_state(sql, slow) == "done", 30, "the slow job done")

    states = collections.Counter(
        s for (s,) in sql("SELECT state FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)
    )
    assert states == {"done": 200}
    assert (
        sql(
            "SELECT count(*) FROM job_tasks WHERE job_id = ANY(CAST(:ids AS uuid[])) AND state <> 'success'",
            ids=job_ids,
        )[0][0]
        == 0
    )
    task_ids = {
        t for (t,) in sql("SELECT id::text FROM job_tasks WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=job_ids)
    }
    assert len(task_ids) == 400
    calls = collections.Counter()
    for pair in analyzers.values():
        assert all(a.calls for a in pair), "both analyzers of a worker share its jobs"
        for analyzer in pair:
            calls.update(analyzer.calls)
    assert set(calls) == task_ids and set(calls.values()) == {1}, "every task analysed exactly once"
    assert sum(r.counts["claimed"] for r in runners) == 400
    assert set(claims_per_task(sql, job_ids).values()) == {1}
    claim_messages = {r.claim_message for r in runners}
    recorded = {
        m
        for (m,) in sql(
            "SELECT message FROM job_history WHERE job_id = ANY(CAST(:ids AS uuid[])) "
            "AND from_state = 'enqueued' AND to_state = 'executing' AND task_id IS NOT NULL",
            ids=job_ids,
        )
    }
    assert recorded <= claim_messages
    assert sum(r.counts["heartbeats"] for r in runners) > 0
    assert not any(elsewhere in a.jobs for pair in analyzers.values() for a in pair), (
        "a task claimed elsewhere is skipped"
    )


def test_an_abort_stops_the_analysis_and_the_job_ends_aborted(worker, make_runner, ingest, sql, live_api, make_key):
    analyzers = [Recording(name, hold=lambda job_id: True) for name in WORKERS]
    with running(*[make_runner(a) for a in analyzers]):
        (job_id,) = ingest([submission_payload()])
        wait_for(lambda: set(task_states(sql, job_id).values()) == {"executing"}, 60, "both tasks claimed")
        user = make_key("USER", customer="acme", user="aborting-alice")
        live_api.delete(f"/job/{job_id}", headers=user, json={"reason": "wrong sample"})
        # Bounded far below SAMPLEDB_ABORT_GRACE_SECONDS (300): the analyzers' reports end it, not the sweep.
        wait_for(lambda: job_state(sql, job_id) == "aborted", 30, "the job aborted")
    job = live_api.get(f"/job/{job_id}", headers=user)["data"]
    assert job["state"] == "aborted" and job["message"] == "All tasks final: cancelled"
    assert {t["state"] for t in job["tasks"]} == {"cancelled"}
    assert {t["message"] for t in job["tasks"]} == {"Abort requested: wrong sample"}
    for analyzer in analyzers:
        assert list(analyzer.stops.values()) == ["Abort requested: wrong sample"], "the analysis was stopped"


def _cli(api_server, kafka_broker, key: str, log_path: Path, *args: str) -> subprocess.Popen:
    env = client_env(api_server.url, key, kafka_broker.url)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*CLI, "analyzer", "run", *args], env=env, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT
        )


def _stop_cli(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].startswith("Z")  # a zombie has ended already


def test_the_cli_reports_exit_status_stderr_and_timeout(
    worker, api_server, kafka_broker, analyzer_key, ingest, sql, live_api, tmp_path
):
    script = (
        "cat > {jobID}.json; case {sha256} in "
        "aa*) echo analysing; echo clean ;; "
        "bb*) echo starting; echo 'line one' >&2; echo 'sample is corrupt' >&2; exit 3 ;; "
        "*) echo $$ > {jobID}.pid; exec sleep 60 ;; esac"
    )
    cases = {prefix: submission_payload(sha256=prefix * 32) for prefix in ("aa", "bb", "cc")}
    cli = _cli(
        api_server,
        kafka_broker,
        analyzer_key,
        tmp_path / "cli.log",
        "--worker",
        "static-analyzer",
        "--concurrency",
        "3",
        "--timeout",
        "3",
        "--",
        "sh",
        "-c",
        script,
    )
    try:
        job_ids = dict(zip(cases, ingest(list(cases.values()))))
        wait_for(
            lambda: all(
                task_states(sql, j)["static-analyzer"] not in ("enqueued", "executing") for j in job_ids.values()
            ),
            60,
            f"the three tasks final; CLI log:\n{(tmp_path / 'cli.log').read_text()[-3000:]}",
        )
    finally:
        status = _stop_cli(cli)
    assert status == 0, (tmp_path / "cli.log").read_text()[-3000:]
    headers = {"Argus-API-Key": analyzer_key}

    def static_task(case: str) -> dict:
        tasks = live_api.get(f"/job/{job_ids[case]}", headers=headers)["data"]["tasks"]
        return next(t for t in tasks if t["worker"] == "static-analyzer")

    clean, corrupt, slow = static_task("aa"), static_task("bb"), static_task("cc")
    assert (clean["state"], clean["message"]) == ("success", "clean")
    assert corrupt["state"] == "failed"
    assert corrupt["message"] == "sh exited with status 3: line one\nsample is corrupt"
    assert slow["state"] == "failed" and slow["message"] == "sh killed after the 3 s timeout"
    pid = int((tmp_path / f"{job_ids['cc']}.pid").read_text())
    wait_for(lambda: _process_gone(pid), 10, "the timed-out command killed")
    # The job's JSON on standard input: the job as the API shows it.
    given = json.loads((tmp_path / f"{job_ids['aa']}.json").read_text())
    assert given["id"] == job_ids["aa"] and given["analysedSample"]["id"] == "aa" * 32
    assert {t["worker"] for t in given["tasks"]} == set(WORKERS)


def test_an_analyzer_killed_mid_job_is_skipped_after_restart_and_the_sweep_times_the_task_out(
    worker, api_server, kafka_broker, analyzer_key, make_runner, ingest, sql, live_app, worker_settings, tmp_path
):
    log_path = tmp_path / "cli.log"
    args = ("--worker", "static-analyzer", "--heartbeat", "0.5", "--", "sh", "-c", "echo $$ > {jobID}.pid; sleep 60")
    sandbox = Recording("sandbox-windows")
    with running(make_runner(sandbox)):
        cli = _cli(api_server, kafka_broker, analyzer_key, log_path, *args)
        try:
            (job_id,) = ingest([submission_payload()])
            wait_for(
                lambda: task_states(sql, job_id) == {"static-analyzer": "executing", "sandbox-windows": "success"},
                60,
                f"the static analysis running; CLI log:\n{log_path.read_text()[-3000:]}",
            )
            command_pid = wait_for(
                lambda: (tmp_path / f"{job_id}.pid").is_file() and int((tmp_path / f"{job_id}.pid").read_text()),
                10,
                "the command started",
            )
        finally:
            cli.kill()  # SIGKILL: no report, no offset commit
            cli.wait(10)
        wait_for(lambda: _process_gone(command_pid), 10, "the command to die with its analyzer")

        # Restarted, the analyzer gets the uncommitted record again and skips the task it finds executing.
        restarted = _cli(api_server, kafka_broker, analyzer_key, log_path, *args)
        try:
            skipped = f"job {job_id} task "
            wait_for(
                lambda: any(
                    skipped in line and "skipped: task already executing" in line
                    for line in log_path.read_text().splitlines()
                ),
                60,
                f"the redelivered job skipped; CLI log:\n{log_path.read_text()[-3000:]}",
            )
            assert job_state(sql, job_id) == "executing"

            # Nothing heartbeats the orphaned task: the sweep times the job out after the execution timeout.
            def swept() -> bool:
                sweep_execution_timeouts(live_app, worker_settings, EXECUTION_TIMEOUT)
                return job_state(sql, job_id) == "timeout"

            wait_for(swept, 30, "the sweep to time the job out", interval=0.2)
        finally:
            assert _stop_cli(restarted) == 0, log_path.read_text()[-3000:]
    assert task_states(sql, job_id) == {"static-analyzer": "timeout", "sandbox-windows": "success"}
    assert set(claims_per_task(sql, [job_id]).values()) == {1}
    assert sql("SELECT count(*) FROM job_tasks WHERE state = 'executing'")[0][0] == 0


def test_sigterm_reports_a_running_analysis_failed(
    worker, api_server, kafka_broker, analyzer_key, ingest, sql, tmp_path
):
    log_path = tmp_path / "cli.log"
    cli = _cli(api_server, kafka_broker, analyzer_key, log_path, "--worker", "static-analyzer", "--", "sleep", "60")
    try:
        (job_id,) = ingest([submission_payload()])
        wait_for(
            lambda: task_states(sql, job_id)["static-analyzer"] == "executing",
            60,
            f"the analysis running; CLI log:\n{log_path.read_text()[-3000:]}",
        )
    finally:
        status = _stop_cli(cli)
    assert status == 0, log_path.read_text()[-3000:]
    assert sql(
        "SELECT state, message FROM job_tasks WHERE job_id = CAST(:id AS uuid) AND worker = 'static-analyzer'",
        id=job_id,
    )[0] == ("failed", "analyzer stopped")


def test_demo_analyze_follows_every_job_to_its_end(worker, api_server, kafka_broker, analyzer_key, sql, tmp_path):
    env = client_env(api_server.url, analyzer_key, kafka_broker.url, COLUMNS="200")
    demo = subprocess.run(
        [*CLI, "demo", "--submissions", "30", "--analyze", "--seed", "7"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    states = collections.Counter(s for (s,) in sql("SELECT state FROM jobs"))
    assert states == {"done": 29, "aborted": 1}
    for figure in ("jobs done", "jobs aborted mid-analysis", "time to done p50", "time to done p99"):
        assert figure in demo.stdout
    assert sql("SELECT count(*) FROM job_tasks WHERE state = 'cancelled'")[0][0] >= 1


def test_a_demo_victim_already_final_is_a_summary_line_not_a_traceback(
    worker, api_server, kafka_broker, analyzer_key, ingest, live_api
):
    """The demo's abort victim is final before its abort (found from outside: the abort's 409 "failed is final"
    ended `demo --analyze` in a traceback): the refusal is a row of the summary and the demo fails."""
    from analyzer.simulate import Simulation

    (victim,) = ingest([submission_payload(customer="demo-victim")])
    headers = {"Argus-API-Key": analyzer_key}
    for task in live_api.get(f"/job/{victim}", headers=headers)["data"]["tasks"]:
        for state in ("executing", "failed"):
            live_api.put(
                f"/job/{victim}/task/{task['id']}", headers=headers, json={"state": state, "message": "ended first"}
            )
    assert live_api.get(f"/job/{victim}", headers=headers)["data"]["state"] == "failed"

    simulation = Simulation(api_server.url, analyzer_key, kafka_broker.url, "OSL", seed=3)
    simulation.submitted(victim)  # no analyzer started it: the job to abort
    assert simulation.begins(victim)  # its analysis starts: the abort goes out at once
    rows, ok = simulation.finish([victim], wait_seconds=30)
    summary = dict(rows)
    assert not ok
    assert summary["abort refused"].startswith(f"DELETE /job/{victim}: 409"), summary
    assert summary["jobs aborted mid-analysis"] == f"0 ({victim}: failed)"


def test_analyzers_stopped_together_hand_their_group_to_the_next(worker, make_runner, ingest, sql):
    # Two members leaving one group at the same moment (a worker's analyzers stopped together) once
    # wedged the dev stack's broker for every later member; they now expire by the session timeout.
    group = f"static-analyzer-{uuid.uuid4().hex[:6]}"
    first = ingest([submission_payload() for _ in range(10)])
    with running(*[make_runner(Recording("static-analyzer"), group_id=group) for _ in range(2)]):
        wait_for(
            lambda: all(task_states(sql, j)["static-analyzer"] == "success" for j in first),
            60,
            "the first jobs analysed",
        )
    with running(make_runner(Recording("static-analyzer"), group_id=group)):
        (later,) = ingest([submission_payload()])
        wait_for(lambda: task_states(sql, later)["static-analyzer"] == "success", 60, "the later job analysed")
