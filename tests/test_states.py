"""§3: every allowed and refused move of jobs and tasks, heartbeats, roll-up and history, over the API."""

from __future__ import annotations

import pytest

from app import clock as service_clock

JOB_FINAL = ["done", "failed", "timeout", "aborted"]
TASK_FINAL_ON_UPDATE = ["success", "failed", "cancelled"]
# What the unfinished tasks become when the job goes final (§3).
TASK_WHEN_JOB_ENDS = {"done": "cancelled", "failed": "failed", "timeout": "timeout", "aborted": "cancelled"}
LONG_AGO = 1_600_000_000_000


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", customer="analysis", user="analyzer", all_customers=True)


@pytest.fixture
def job(api, analyzer):
    """job(job_id) -> the job as GET /job/{id} shows it."""
    return lambda job_id: api.get(f"/job/{job_id}", headers=analyzer)["data"]


@pytest.fixture
def history(api, analyzer):
    return lambda job_id: api.get(f"/job/{job_id}/history", headers=analyzer)["data"]


def job_moves(entries: list[dict]) -> list[tuple]:
    return [(e["fromState"], e["toState"]) for e in entries if e["taskID"] is None]


def now_ms() -> int:
    return service_clock.now_ms()


def put_job(api, headers, job_id, state, status=200, **extra):
    return api.put(f"/job/{job_id}", status, headers=headers, json={"state": state, **extra})


def put_task(api, headers, job_id, task_id, state, status=200, **extra):
    return api.put(f"/job/{job_id}/task/{task_id}", status, headers=headers, json={"state": state, **extra})


# -- jobs ---------------------------------------------------------------------------------------------


def test_new_job_is_enqueued_with_one_task_per_accepting_worker(make_job, job):
    created = job(make_job(platform="win"))
    assert created["state"] == "enqueued" and created["flags"] == []
    assert [t["worker"] for t in created["tasks"]] == ["sandbox-windows", "static-analyzer"]
    assert all(t["state"] == "enqueued" for t in created["tasks"])
    assert created["startTimestamp"] is None and created["endTimestamp"] is None
    assert created["lastUpdatedTimestamp"] == created["enqueuedTimestamp"]


def test_enqueued_to_executing(api, analyzer, make_job, job, history):
    job_id = make_job()
    before = now_ms()
    updated = put_job(api, analyzer, job_id, "executing", message="picked up")["data"]
    assert updated["state"] == "executing"
    assert before <= updated["startTimestamp"] == updated["lastUpdatedTimestamp"] <= now_ms()
    assert updated["endTimestamp"] is None
    assert updated["message"] == "picked up"
    assert updated["lastUpdatedByUser"]["shortName"] == "analyzer"
    assert updated == job(job_id)
    # The tasks are not touched by the job's start.
    assert [t["state"] for t in updated["tasks"]] == ["enqueued", "enqueued"]
    assert job_moves(history(job_id)) == [(None, "enqueued"), ("enqueued", "executing")]


@pytest.mark.parametrize("start", ["enqueued", "executing"])
@pytest.mark.parametrize("final", JOB_FINAL)
def test_active_to_every_final_state(api, analyzer, make_job, job, history, start, final):
    job_id = make_job()
    if start == "executing":
        put_job(api, analyzer, job_id, "executing")
    before = now_ms()
    ended = put_job(api, analyzer, job_id, final, message=f"now {final}")["data"]
    assert ended["state"] == final and ended["flags"] == []
    assert before <= ended["endTimestamp"] == ended["lastUpdatedTimestamp"] <= now_ms()
    assert ended["message"] == f"now {final}"
    assert [t["state"] for t in ended["tasks"]] == [TASK_WHEN_JOB_ENDS[final]] * 2
    assert all(t["endTimestamp"] == ended["endTimestamp"] for t in ended["tasks"])
    assert ended == job(job_id)
    moves = job_moves(history(job_id))
    assert moves[-1] == (start, final)


@pytest.mark.parametrize("final", JOB_FINAL)
def test_same_final_state_again_is_an_idempotent_no_op(api, analyzer, make_job, job, history, final, clock):
    job_id = make_job()
    put_job(api, analyzer, job_id, "executing")
    put_job(api, analyzer, job_id, final, message="first")
    before, entries = job(job_id), history(job_id)
    clock.shift(1)  # a repeat that wrote anything would show a later timestamp
    again = put_job(api, analyzer, job_id, final, message="second")["data"]
    assert again == before  # unchanged: not even lastUpdatedTimestamp or the message
    assert history(job_id) == entries


@pytest.mark.parametrize(
    "final, target",
    [(final, target) for final in JOB_FINAL for target in ["enqueued", "executing", *JOB_FINAL] if target != final],
)
def test_no_move_out_of_a_final_state(api, analyzer, make_job, job, final, target):
    job_id = make_job()
    put_job(api, analyzer, job_id, final)
    before = job(job_id)
    body = put_job(api, analyzer, job_id, target, 409)
    text = body["messages"][0]["message"]
    assert final in text and target in text
    assert job(job_id) == before


def test_back_to_enqueued_is_refused(api, analyzer, make_job, job):
    job_id = make_job()
    body = put_job(api, analyzer, job_id, "enqueued", 409)
    assert body["messages"][0]["message"].count("enqueued") >= 2
    put_job(api, analyzer, job_id, "executing")
    body = put_job(api, analyzer, job_id, "enqueued", 409)
    assert "executing" in body["messages"][0]["message"] and "enqueued" in body["messages"][0]["message"]
    assert job(job_id)["state"] == "executing"


def test_heartbeat_only_refreshes_last_updated(api, analyzer, make_job, job, history, sql):
    job_id = make_job()
    put_job(api, analyzer, job_id, "executing", message="started")
    sql("UPDATE jobs SET last_updated_timestamp = :t WHERE id = :id", t=LONG_AGO, id=job_id)
    before, entries = job(job_id), history(job_id)
    outbox_rows = sql("SELECT count(*) FROM outbox")[0][0]
    beat = put_job(api, analyzer, job_id, "executing", message="still going")["data"]
    assert beat["lastUpdatedTimestamp"] >= now_ms() - 5_000
    # A heartbeat says "still alive" and nothing else: same state, start, message; no history, no event.
    assert {**beat, "lastUpdatedTimestamp": LONG_AGO} == before
    assert history(job_id) == entries
    assert sql("SELECT count(*) FROM outbox")[0][0] == outbox_rows


def test_post_updates_like_put(api, analyzer, make_job):
    job_id = make_job()
    body = api.post(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    assert body["data"]["state"] == "executing"
    body = api.post(f"/job/{job_id}", headers=analyzer, json={"state": "failed", "message": "crashed"})
    assert (body["data"]["state"], body["data"]["message"]) == ("failed", "crashed")


# -- tasks --------------------------------------------------------------------------------------------


@pytest.fixture
def tasks(job):
    return lambda job_id: {t["worker"]: t["id"] for t in job(job_id)["tasks"]}


def test_task_moves_and_timestamps(api, analyzer, make_job, job, tasks):
    job_id = make_job()
    static = tasks(job_id)["static-analyzer"]
    before = now_ms()
    started = put_task(api, analyzer, job_id, static, "executing")["data"]
    assert started["state"] == "executing" and before <= started["startTimestamp"] <= now_ms()
    assert started["endTimestamp"] is None
    done = put_task(
        api, analyzer, job_id, static, "success", message="clean", analyses=["6f1c2f9c-1a7e-4b7a-9d43-4b5b7d1c8e11"]
    )["data"]
    assert done["state"] == "success" and done["startTimestamp"] == started["startTimestamp"]
    assert done["endTimestamp"] >= started["startTimestamp"] and done["message"] == "clean"
    assert done["analyses"] == [
        {"id": "6f1c2f9c-1a7e-4b7a-9d43-4b5b7d1c8e11", "analysisScore": None, "userAgent": None}
    ]
    assert api.get(f"/job/{job_id}/task/{static}", headers=analyzer)["data"] == done


@pytest.mark.parametrize("final", TASK_FINAL_ON_UPDATE)
@pytest.mark.parametrize("start", ["enqueued", "executing"])
def test_task_active_to_final(api, analyzer, make_job, tasks, start, final):
    job_id = make_job()
    task_id = tasks(job_id)["static-analyzer"]
    if start == "executing":
        put_task(api, analyzer, job_id, task_id, "executing")
    assert put_task(api, analyzer, job_id, task_id, final)["data"]["state"] == final


def test_successful_is_accepted_as_success(api, analyzer, make_job, tasks):
    job_id = make_job()
    task_id = tasks(job_id)["static-analyzer"]
    assert put_task(api, analyzer, job_id, task_id, "successful")["data"]["state"] == "success"
    # ... and repeating it is the idempotent repeat of success.
    assert put_task(api, analyzer, job_id, task_id, "successful")["data"]["state"] == "success"
    assert put_task(api, analyzer, job_id, task_id, "success")["data"]["state"] == "success"


@pytest.mark.parametrize("final", TASK_FINAL_ON_UPDATE)
def test_task_final_state_repeat_and_conflict(api, analyzer, make_job, tasks, history, final, clock):
    job_id = make_job()
    task_id = tasks(job_id)["static-analyzer"]
    first = put_task(api, analyzer, job_id, task_id, final)["data"]
    entries = history(job_id)
    clock.shift(1)  # a repeat that wrote anything would show a later timestamp
    assert put_task(api, analyzer, job_id, task_id, final, message="again")["data"] == first
    assert history(job_id) == entries
    for other in ["executing", *TASK_FINAL_ON_UPDATE]:
        if other == final:
            continue
        text = put_task(api, analyzer, job_id, task_id, other, 409)["messages"][0]["message"]
        assert final in text and other in text
    assert api.get(f"/job/{job_id}/task/{task_id}", headers=analyzer)["data"] == first


def test_task_cannot_be_set_back_to_enqueued_or_to_timeout(api, analyzer, make_job, tasks):
    job_id = make_job()
    task_id = tasks(job_id)["static-analyzer"]
    for state in ("enqueued", "timeout", "done", "SUCCESS"):
        body = put_task(api, analyzer, job_id, task_id, state, 412)
        assert [m["field"] for m in body["messages"]] == ["state"]


def test_task_heartbeat_refreshes_task_and_job(api, analyzer, make_job, job, tasks, history, sql):
    job_id = make_job()
    task_id = tasks(job_id)["static-analyzer"]
    put_task(api, analyzer, job_id, task_id, "executing")
    sql("UPDATE jobs SET last_updated_timestamp = :t WHERE id = :id", t=LONG_AGO, id=job_id)
    sql("UPDATE job_tasks SET last_updated_timestamp = :t WHERE id = :id", t=LONG_AGO, id=task_id)
    entries = history(job_id)
    task = put_task(api, analyzer, job_id, task_id, "executing")["data"]
    assert task["state"] == "executing" and task["lastUpdatedTimestamp"] >= now_ms() - 5_000
    assert job(job_id)["lastUpdatedTimestamp"] >= now_ms() - 5_000
    assert history(job_id) == entries


def test_any_task_update_refreshes_the_jobs_last_updated(api, analyzer, make_job, job, tasks, sql):
    job_id = make_job()
    put_job(api, analyzer, job_id, "executing")
    ids = tasks(job_id)
    sql("UPDATE jobs SET last_updated_timestamp = :t WHERE id = :id", t=LONG_AGO, id=job_id)
    put_task(api, analyzer, job_id, ids["static-analyzer"], "executing")
    assert job(job_id)["lastUpdatedTimestamp"] >= now_ms() - 5_000
    sql("UPDATE jobs SET last_updated_timestamp = :t WHERE id = :id", t=LONG_AGO, id=job_id)
    put_task(api, analyzer, job_id, ids["static-analyzer"], "success")
    refreshed = job(job_id)
    assert refreshed["state"] == "executing" and refreshed["lastUpdatedTimestamp"] >= now_ms() - 5_000


def test_task_list_sort_limit_offset(api, analyzer, make_job, tasks, clock):
    job_id = make_job(platform="win", super_type="document")  # static, sandbox-windows, document
    ids = tasks(job_id)
    put_task(api, analyzer, job_id, ids["sandbox-windows"], "executing")
    clock.shift(1)  # the two tasks' startTimestamps differ
    put_task(api, analyzer, job_id, ids["document-analyzer"], "executing")
    body = api.get(f"/job/{job_id}/tasks", headers=analyzer)
    assert [t["worker"] for t in body["data"]] == ["document-analyzer", "sandbox-windows", "static-analyzer"]
    assert (body["count"], body["size"], body["limit"], body["offset"]) == (3, 3, 25, 0)
    body = api.get(f"/job/{job_id}/tasks", headers=analyzer, query_string={"sortBy": "-worker", "limit": 2})
    assert [t["worker"] for t in body["data"]] == ["static-analyzer", "sandbox-windows"]
    assert (body["count"], body["size"], body["limit"]) == (3, 2, 2)
    body = api.get(f"/job/{job_id}/tasks", headers=analyzer, query_string={"sortBy": "startTimestamp", "offset": 1})
    # Not started sorts last.
    assert [t["worker"] for t in body["data"]] == ["document-analyzer", "static-analyzer"]
    body = api.get(f"/job/{job_id}/tasks", headers=analyzer, query_string=[("sortBy", "state"), ("sortBy", "-worker")])
    assert [t["worker"] for t in body["data"]] == ["static-analyzer", "sandbox-windows", "document-analyzer"]
    body = api.get(f"/job/{job_id}/tasks", 412, headers=analyzer, query_string={"sortBy": "analyses"})
    assert [m["field"] for m in body["messages"]] == ["sortBy"]


# -- roll-up ----------------------------------------------------------------------------------------------


def test_first_task_to_start_makes_the_job_executing(api, analyzer, make_job, job, tasks, history):
    job_id = make_job()
    ids = tasks(job_id)
    task = put_task(api, analyzer, job_id, ids["static-analyzer"], "executing")["data"]
    rolled = job(job_id)
    assert rolled["state"] == "executing" and rolled["startTimestamp"] == task["startTimestamp"]
    put_task(api, analyzer, job_id, ids["sandbox-windows"], "executing")
    assert job_moves(history(job_id)) == [(None, "enqueued"), ("enqueued", "executing")]


def test_task_finishing_first_also_starts_the_job(api, analyzer, make_job, job, tasks, history):
    # A task that reports straight "success" has run: its job is executing (and so subject to the
    # execution timeout, whose clock every task report resets).
    job_id = make_job()
    put_task(api, analyzer, job_id, tasks(job_id)["static-analyzer"], "success")
    assert job(job_id)["state"] == "executing"
    assert job_moves(history(job_id)) == [(None, "enqueued"), ("enqueued", "executing")]


@pytest.mark.parametrize(
    "finals, expected",
    [
        (["success", "success"], "done"),
        (["success", "failed"], "done"),
        (["cancelled", "success"], "done"),
        (["failed", "failed"], "failed"),
        (["failed", "cancelled"], "failed"),
        (["cancelled", "cancelled"], "failed"),
    ],
)
def test_all_tasks_final_rolls_up(api, analyzer, make_job, job, tasks, history, finals, expected):
    job_id = make_job()
    ids = list(tasks(job_id).values())
    for task_id in ids:
        put_task(api, analyzer, job_id, task_id, "executing")
    put_task(api, analyzer, job_id, ids[0], finals[0])
    assert job(job_id)["state"] == "executing"
    put_task(api, analyzer, job_id, ids[1], finals[1])
    rolled = job(job_id)
    assert rolled["state"] == expected and rolled["endTimestamp"] is not None
    assert [t["state"] for t in rolled["tasks"]] == [finals[0], finals[1]]  # tasks keep their own states
    assert job_moves(history(job_id)) == [(None, "enqueued"), ("enqueued", "executing"), ("executing", expected)]


def test_all_tasks_final_after_an_abort_request_rolls_up_to_aborted(api, analyzer, make_job, job, tasks):
    job_id = make_job()
    ids = list(tasks(job_id).values())
    put_task(api, analyzer, job_id, ids[0], "executing")
    api.delete(f"/job/{job_id}", headers=analyzer, json={"reason": "not needed"})
    put_task(api, analyzer, job_id, ids[0], "success")
    put_task(api, analyzer, job_id, ids[1], "cancelled")
    rolled = job(job_id)
    assert rolled["state"] == "aborted" and rolled["flags"] == []


@pytest.mark.parametrize("final", JOB_FINAL)
def test_explicit_job_update_wins_and_closes_unfinished_tasks(api, analyzer, make_job, job, tasks, history, final):
    job_id = make_job(platform="win", super_type="document")
    ids = tasks(job_id)
    put_task(api, analyzer, job_id, ids["static-analyzer"], "executing")
    put_task(api, analyzer, job_id, ids["static-analyzer"], "success")
    put_task(api, analyzer, job_id, ids["sandbox-windows"], "executing")
    # document-analyzer never started
    ended = put_job(api, analyzer, job_id, final)["data"]
    states = {t["worker"]: t["state"] for t in ended["tasks"]}
    assert ended["state"] == final
    assert states == {
        "static-analyzer": "success",
        "sandbox-windows": TASK_WHEN_JOB_ENDS[final],
        "document-analyzer": TASK_WHEN_JOB_ENDS[final],
    }
    # The closed tasks are final: a late report is refused, the same state again is a no-op.
    late = "success" if TASK_WHEN_JOB_ENDS[final] != "success" else "failed"
    put_task(api, analyzer, job_id, ids["sandbox-windows"], late, 409)
    if TASK_WHEN_JOB_ENDS[final] in TASK_FINAL_ON_UPDATE:
        put_task(api, analyzer, job_id, ids["sandbox-windows"], TASK_WHEN_JOB_ENDS[final])
    assert job(job_id)["state"] == final
    task_moves = [(e["fromState"], e["toState"]) for e in history(job_id) if e["taskID"] == ids["document-analyzer"]]
    assert task_moves == [("enqueued", TASK_WHEN_JOB_ENDS[final])]


def test_job_going_final_does_not_roll_up_again(api, analyzer, make_job, job, history, tasks):
    job_id = make_job()
    ids = list(tasks(job_id).values())
    put_task(api, analyzer, job_id, ids[0], "success")
    put_job(api, analyzer, job_id, "failed", message="analyzer gave up")
    ended = job(job_id)
    # The explicit "failed" wins over the success of a task.
    assert ended["state"] == "failed" and ended["message"] == "analyzer gave up"
    assert job_moves(history(job_id))[-1] == ("executing", "failed")
    assert len([m for m in job_moves(history(job_id)) if m[1] in JOB_FINAL]) == 1


# -- history ---------------------------------------------------------------------------------------------


def test_history_records_who_when_from_to_and_message_oldest_first(api, analyzer, make_job, tasks, history, make_key):
    job_id = make_job()
    ids = tasks(job_id)
    t0 = now_ms()
    put_task(api, analyzer, job_id, ids["static-analyzer"], "executing", message="unpacking")
    put_task(api, analyzer, job_id, ids["static-analyzer"], "success", message="clean")
    user = make_key("USER", customer="acme", user="alice")
    api.delete(f"/job/{job_id}", headers=user, query_string={"reason": "duplicate"})
    put_task(api, analyzer, job_id, ids["sandbox-windows"], "cancelled", message="abort honoured")
    entries = history(job_id)
    assert [(e["taskID"], e["fromState"], e["toState"], e["message"]) for e in entries] == [
        (None, None, "enqueued", entries[0]["message"]),
        (ids["static-analyzer"], "enqueued", "executing", "unpacking"),
        (None, "enqueued", "executing", None),
        (ids["static-analyzer"], "executing", "success", "clean"),
        (None, "executing", "executing", "Abort requested: duplicate"),
        (ids["sandbox-windows"], "enqueued", "cancelled", "abort honoured"),
        (None, "executing", "aborted", entries[-1]["message"]),
    ]
    assert "submission" in entries[0]["message"]
    assert entries[0]["user"] is None  # made by ingest, not by a user
    users = [e["user"]["shortName"] if e["user"] else None for e in entries]
    assert users == [None, "analyzer", "analyzer", "analyzer", "alice", "analyzer", "analyzer"]
    assert entries[4]["user"]["customer"]["shortName"] == "acme"
    stamps = [e["timestamp"] for e in entries]
    assert stamps == sorted(stamps) and stamps[1] >= t0 and stamps[-1] <= now_ms()
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert all(e["jobID"] == job_id for e in entries)
    body = api.get(f"/job/{job_id}/history", headers=analyzer)
    assert (body["count"], body["size"]) == (7, 7)


def test_every_job_state_change_is_announced_on_the_event_topic(api, analyzer, make_job, tasks, sql):
    job_id = make_job()
    put_job(api, analyzer, job_id, "executing", message="go")
    put_task(api, analyzer, job_id, tasks(job_id)["static-analyzer"], "success")  # tasks are not announced
    put_job(api, analyzer, job_id, "done")
    rows = sql("SELECT key, value FROM outbox WHERE topic = 'Sample.Analysis.Job.Event.OSL' ORDER BY id")
    assert [r[0] for r in rows] == [job_id] * 3
    values = [r[1] for r in rows]
    assert [(v["fromState"], v["toState"]) for v in values] == [
        (None, "enqueued"),
        ("enqueued", "executing"),
        ("executing", "done"),
    ]
    assert values[1]["message"] == "go" and values[1]["user"]["shortName"] == "analyzer"
    assert set(values[2]) == {"jobID", "fromState", "toState", "timestamp", "user", "message"}
    assert all(v["jobID"] == job_id and isinstance(v["timestamp"], int) for v in values)
