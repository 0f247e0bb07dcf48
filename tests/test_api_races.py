"""§3 "Concurrent updates must not lose changes or break these rules": races over the real database.

Each thread has its own Flask test client, so its own app context and (thread-local) session.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.api import BASE, check_envelope

pytestmark = pytest.mark.committing  # threads race over their own connections

JOB_FINAL = ["done", "failed", "timeout", "aborted"]
THREADS = 20


def race(app, headers: dict, requests: list[tuple[str, str, dict]]) -> list[tuple[int, dict]]:
    """Send (method, path, json) requests at the same moment, one thread each; (status, body) in order."""
    barrier = threading.Barrier(len(requests))

    def send(request):
        method, path, body = request
        client = app.test_client()
        barrier.wait()
        response = client.open(BASE + path, method=method, json=body, headers=headers)
        return response.status_code, check_envelope(response)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", all_customers=True)


def job_history(api, headers, job_id):
    return api.get(f"/job/{job_id}/history", headers=headers)["data"]


@pytest.mark.parametrize("round_", range(3))
def test_conflicting_final_states_exactly_one_wins(app, api, analyzer, make_job, round_):
    job_id = make_job()
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    wanted = [JOB_FINAL[i % 4] for i in range(THREADS)]
    results = race(
        app,
        analyzer,
        [("PUT", f"/job/{job_id}", {"state": state, "message": f"thread {i}"}) for i, state in enumerate(wanted)],
    )

    final = api.get(f"/job/{job_id}", headers=analyzer)["data"]
    winner = final["state"]
    assert winner in JOB_FINAL
    for state, (status, body) in zip(wanted, results):
        if state == winner:
            # The winner, or an idempotent repeat of the winner's state: 200 and the winner's job.
            assert status == 200 and body["data"]["state"] == winner
        else:
            assert status == 409, (state, winner, status)
            assert winner in body["messages"][0]["message"] and state in body["messages"][0]["message"]
    # Exactly one request made the change: one final move in the history, one message kept.
    moves = [(e["fromState"], e["toState"]) for e in job_history(api, analyzer, job_id) if e["taskID"] is None]
    assert moves == [(None, "enqueued"), ("enqueued", "executing"), ("executing", winner)]
    winners = [
        i
        for i, (state, (status, body)) in enumerate(zip(wanted, results))
        if status == 200 and body["data"]["message"] == f"thread {i}"
    ]
    assert len(winners) == 1 and final["message"] == f"thread {winners[0]}"


def test_conflicting_abort_and_final_updates(app, api, analyzer, make_job):
    job_id = make_job()
    requests = [("DELETE", f"/job/{job_id}", {"reason": f"abort {i}"}) for i in range(THREADS // 2)]
    requests += [("PUT", f"/job/{job_id}", {"state": "executing"}) for _ in range(THREADS // 4)]
    requests += [("PUT", f"/job/{job_id}", {"state": "done"}) for _ in range(THREADS // 4)]
    results = race(app, analyzer, requests)
    final = api.get(f"/job/{job_id}", headers=analyzer)["data"]
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 409}
    moves = [
        (e["fromState"], e["toState"])
        for e in job_history(api, analyzer, job_id)
        if e["taskID"] is None and e["fromState"] != e["toState"]
    ]
    finals = [m for m in moves if m[1] in JOB_FINAL]
    assert len(finals) == 1 and finals[0][1] == final["state"]
    assert final["state"] in ("aborted", "done")


def test_concurrent_task_updates_lose_nothing_and_roll_up_once(app, api, analyzer, make_job):
    # Twelve workers accept every sample: twelve tasks, static-analyzer and sandbox-windows included.
    for i in range(10):
        api.post(
            "/worker",
            201,
            headers=analyzer,
            json={
                "shortName": f"race-{i:02d}",
                "localizedNames": {"english": f"Race {i}"},
                "localizedDescriptions": {"english": "Races"},
            },
        )
    job_id = make_job()
    tasks = [t["id"] for t in api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"]]
    assert len(tasks) == 12

    started = race(app, analyzer, [("PUT", f"/job/{job_id}/task/{t}", {"state": "executing"}) for t in tasks])
    assert [status for status, _ in started] == [200] * 12
    finals = {t: ("success" if i % 3 == 0 else "failed" if i % 3 == 1 else "cancelled") for i, t in enumerate(tasks)}
    ended = race(
        app, analyzer, [("PUT", f"/job/{job_id}/task/{t}", {"state": s, "message": t}) for t, s in finals.items()]
    )
    assert [status for status, _ in ended] == [200] * 12

    job = api.get(f"/job/{job_id}", headers=analyzer)["data"]
    assert {t["id"]: t["state"] for t in job["tasks"]} == finals
    assert all(t["message"] == t["id"] for t in job["tasks"])
    assert job["state"] == "done"
    entries = job_history(api, analyzer, job_id)
    assert [(e["fromState"], e["toState"]) for e in entries if e["taskID"] is None] == [
        (None, "enqueued"),
        ("enqueued", "executing"),
        ("executing", "done"),
    ]
    for task_id, state in finals.items():
        assert [(e["fromState"], e["toState"]) for e in entries if e["taskID"] == task_id] == [
            ("enqueued", "executing"),
            ("executing", state),
        ]


def test_concurrent_task_updates_without_success_roll_up_to_failed_once(app, api, analyzer, make_job):
    job_id = make_job(super_type="document")  # static-analyzer, sandbox-windows, document-analyzer
    tasks = [t["id"] for t in api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"]]
    results = race(app, analyzer, [("PUT", f"/job/{job_id}/task/{t}", {"state": "failed"}) for t in tasks] * 4)
    # The first report of each task changes it; the repeats are idempotent.
    assert [status for status, _ in results] == [200] * (len(tasks) * 4)
    job = api.get(f"/job/{job_id}", headers=analyzer)["data"]
    assert job["state"] == "failed" and {t["state"] for t in job["tasks"]} == {"failed"}
    entries = job_history(api, analyzer, job_id)
    assert [(e["fromState"], e["toState"]) for e in entries if e["taskID"] is None] == [
        (None, "enqueued"),
        ("enqueued", "executing"),
        ("executing", "failed"),
    ]
    assert len([e for e in entries if e["taskID"] is not None]) == len(tasks)


def test_conflicting_final_states_forced_to_overlap_inside_their_transactions(settings, make_key, make_job):
    """The race made certain: every request is inside its transaction, waiting on the job's row lock (held by
    another session until all of them wait, as pg_stat_activity shows), before any may go on. Exactly one
    final state wins; the others are 409, and the history has one final move."""
    import dataclasses

    import sqlalchemy as sa

    from app.extensions import db
    from app.factory import create_app
    from tests.support.waiting import wait_for

    patient = create_app(dataclasses.replace(settings, api_lock_timeout_ms=30_000))
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    analyzer = make_key("ANALYZER", all_customers=True)
    job_id = make_job()
    client = patient.test_client()
    assert client.put(f"{BASE}/job/{job_id}", headers=analyzer, json={"state": "executing"}).status_code == 200
    wanted = [JOB_FINAL[i % 4] for i in range(THREADS)]

    def waiting_on_a_lock() -> int:
        with engine.connect() as conn:
            return conn.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND wait_event_type = 'Lock'"),
                {"d": engine.url.database},
            )

    def send(i: int):
        response = patient.test_client().put(
            f"{BASE}/job/{job_id}", headers=analyzer, json={"state": wanted[i], "message": f"thread {i}"}
        )
        return response.status_code, check_envelope(response)

    with engine.connect() as holder, ThreadPoolExecutor(max_workers=THREADS) as pool:
        holder.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        futures = [pool.submit(send, i) for i in range(THREADS)]
        wait_for(lambda: waiting_on_a_lock() == THREADS, 30, f"{THREADS} requests waiting inside their transaction")
        assert not any(f.done() for f in futures)  # none got further while the lock is held
        holder.rollback()
        results = [f.result(timeout=60) for f in futures]
    engine.dispose()

    final = check_envelope(client.get(f"{BASE}/job/{job_id}", headers=analyzer))["data"]
    winner = final["state"]
    assert sorted(status for _, (status, _) in zip(wanted, results)) == sorted(
        200 if state == winner else 409 for state in wanted
    )
    history = check_envelope(client.get(f"{BASE}/job/{job_id}/history", headers=analyzer))["data"]
    moves = [(e["fromState"], e["toState"]) for e in history if e["taskID"] is None]
    assert moves == [(None, "enqueued"), ("enqueued", "executing"), ("executing", winner)]
    db.engine_of(patient).dispose()
