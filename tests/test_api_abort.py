"""§4 abort: DELETE /job/{id}, the ABORT_REQUESTED flag, the analyzer's confirmation and the outbox."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app import clock as service_clock
from app.extensions import db
from app.jobs import service
from app.jobs.states import StateConflict
from app.models import Job

ABORT_TOPIC = "Sample.Analysis.Job.Abort.OSL"
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", customer="analysis", user="analyzer", all_customers=True)


@pytest.fixture
def alice(make_key):
    return make_key("USER", customer="acme", user="alice")


def now_ms() -> int:
    return service_clock.now_ms()


def outbox(sql, job_id: str, topic: str) -> list[dict]:
    return [r[0] for r in sql("SELECT value FROM outbox WHERE key = :k AND topic = :t ORDER BY id", k=job_id, t=topic)]


def test_abort_of_an_enqueued_job_is_immediate(api, alice, make_job, sql):
    job_id = make_job(customer="acme")
    before = now_ms()
    job = api.delete(f"/job/{job_id}", headers=alice, json={"reason": "submitted by mistake"})["data"]
    assert job["state"] == "aborted"
    assert job["flags"] == []  # the request is fulfilled: nothing is pending
    assert before <= job["abortRequestedTimestamp"] <= now_ms()
    assert job["endTimestamp"] == job["abortRequestedTimestamp"]
    assert job["abortRequestedByUser"]["shortName"] == "alice"
    assert job["abortReason"] == "submitted by mistake"
    assert [t["state"] for t in job["tasks"]] == ["cancelled", "cancelled"]
    assert api.get(f"/job/{job_id}", headers=alice)["data"] == job

    (abort,) = outbox(sql, job_id, ABORT_TOPIC)
    assert abort == {
        "jobID": job_id,
        "sample": {"id": job["analysedSample"]["id"]},
        "state": "aborted",
        "requestedTimestamp": job["abortRequestedTimestamp"],
        "requestedByUser": job["abortRequestedByUser"],
        "reason": "submitted by mistake",
    }
    events = outbox(sql, job_id, EVENT_TOPIC)
    assert [(e["fromState"], e["toState"]) for e in events] == [(None, "enqueued"), ("enqueued", "aborted")]


def test_abort_of_an_executing_job_is_a_request_the_analyzer_confirms(api, alice, analyzer, make_job, sql):
    job_id = make_job(customer="acme")
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    job = api.delete(f"/job/{job_id}", headers=alice, query_string={"reason": "taking too long"})["data"]
    assert job["state"] == "executing" and job["flags"] == ["ABORT_REQUESTED"]
    assert job["endTimestamp"] is None
    assert job["abortRequestedByUser"]["shortName"] == "alice" and job["abortReason"] == "taking too long"
    assert job["abortRequestedTimestamp"] >= now_ms() - 5_000
    assert [t["state"] for t in job["tasks"]] == ["enqueued", "enqueued"]
    (abort,) = outbox(sql, job_id, ABORT_TOPIC)
    assert abort["state"] == "executing" and abort["reason"] == "taking too long"
    assert abort["requestedByUser"]["shortName"] == "alice"
    # No state change, so no event beyond creation and start.
    assert len(outbox(sql, job_id, EVENT_TOPIC)) == 2
    # The listing shows the flag too.
    listed = api.get("/job", headers=alice)["data"]
    assert [(j["id"], j["flags"]) for j in listed] == [(job_id, ["ABORT_REQUESTED"])]

    confirmed = api.put(f"/job/{job_id}", headers=analyzer, json={"state": "aborted", "message": "stopped"})["data"]
    assert confirmed["state"] == "aborted" and confirmed["flags"] == []
    assert confirmed["abortReason"] == "taking too long" and confirmed["message"] == "stopped"
    assert [t["state"] for t in confirmed["tasks"]] == ["cancelled", "cancelled"]
    assert [(e["fromState"], e["toState"]) for e in outbox(sql, job_id, EVENT_TOPIC)][-1] == ("executing", "aborted")


def test_analyzer_may_finish_the_job_instead_of_aborting_it(api, alice, analyzer, make_job):
    # The analyzer decides: the abort request does not forbid another final state.
    job_id = make_job(customer="acme")
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    api.delete(f"/job/{job_id}", headers=alice)
    job = api.put(f"/job/{job_id}", headers=analyzer, json={"state": "done"})["data"]
    assert job["state"] == "done" and job["flags"] == []
    # Aborting the finished job now is a conflict.
    api.delete(f"/job/{job_id}", 409, headers=alice)


def test_second_abort_request_is_idempotent(api, alice, analyzer, make_key, make_job, sql):
    job_id = make_job(customer="acme")
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    first = api.delete(f"/job/{job_id}", headers=alice, json={"reason": "first"})["data"]
    again = api.delete(
        f"/job/{job_id}", headers=make_key("USER", customer="acme", user="bob"), json={"reason": "second"}
    )["data"]
    assert again == first  # the first request stands
    assert len(outbox(sql, job_id, ABORT_TOPIC)) == 1


def test_abort_of_an_aborted_job_is_200_unchanged(api, alice, make_job, sql, clock):
    job_id = make_job(customer="acme")
    first = api.delete(f"/job/{job_id}", headers=alice)["data"]
    history = api.get(f"/job/{job_id}/history", headers=alice)["data"]
    clock.shift(1)  # a second abort that wrote anything would show a later timestamp
    assert api.delete(f"/job/{job_id}", headers=alice, json={"reason": "again"})["data"] == first
    assert api.get(f"/job/{job_id}/history", headers=alice)["data"] == history
    assert len(outbox(sql, job_id, ABORT_TOPIC)) == 1


@pytest.mark.parametrize("final", ["done", "failed", "timeout"])
def test_abort_of_another_final_state_is_409(api, alice, analyzer, make_job, sql, final):
    job_id = make_job(customer="acme")
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": final})
    before = api.get(f"/job/{job_id}", headers=alice)["data"]
    body = api.delete(f"/job/{job_id}", 409, headers=alice, json={"reason": "too late"})
    text = body["messages"][0]["message"]
    assert final in text and "aborted" in text
    assert api.get(f"/job/{job_id}", headers=alice)["data"] == before
    assert outbox(sql, job_id, ABORT_TOPIC) == []


def test_reason_from_body_or_query_and_optional(api, alice, make_job):
    by_body = make_job(customer="acme")
    assert api.delete(f"/job/{by_body}", headers=alice, json={"reason": "body"})["data"]["abortReason"] == "body"
    by_query = make_job(customer="acme")
    assert (
        api.delete(f"/job/{by_query}", headers=alice, query_string={"reason": "query"})["data"]["abortReason"]
        == "query"
    )
    without = make_job(customer="acme")
    job = api.delete(f"/job/{without}", headers=alice)["data"]
    assert job["abortReason"] is None and job["state"] == "aborted"
    # The seed's own request: no body, no content type.
    plain = make_job(customer="acme")
    response = api.client.delete(f"/sampledb/v2/job/{plain}", headers=alice)
    assert response.status_code == 200 and response.get_json()["data"]["state"] == "aborted"


def test_too_long_reason_is_412(api, alice, make_job, sql):
    job_id = make_job(customer="acme")
    body = api.delete(f"/job/{job_id}", 412, headers=alice, json={"reason": "x" * 4097})
    assert [m["field"] for m in body["messages"]] == ["reason"]
    body = api.delete(f"/job/{job_id}", 412, headers=alice, query_string={"reason": "x" * 4097})
    assert [m["field"] for m in body["messages"]] == ["reason"]
    body = api.delete(f"/job/{job_id}", 412, headers=alice, json={"reason": 5, "why": "x"})
    assert sorted(m["field"] for m in body["messages"]) == ["reason", "why"]
    assert api.get(f"/job/{job_id}", headers=alice)["data"]["state"] == "enqueued"
    assert outbox(sql, job_id, ABORT_TOPIC) == []
    assert api.delete(f"/job/{job_id}", headers=alice, json={"reason": "y" * 4096})["data"]["abortReason"] == "y" * 4096


def test_outbox_rows_are_written_in_the_same_transaction_as_the_change(api, alice, analyzer, make_job, sql):
    job_id = make_job(customer="acme")
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "executing"})
    api.delete(f"/job/{job_id}", headers=alice)
    # xmin is the id of the transaction that wrote the row version.
    (job_xmin,) = sql("SELECT xmin::text FROM jobs WHERE id = :id", id=job_id)[0]
    rows = sql("SELECT xmin::text FROM outbox WHERE key = :k AND topic = :t", k=job_id, t=ABORT_TOPIC)
    assert rows == [(job_xmin,)]
    history_xmin = sql("SELECT xmin::text FROM job_history WHERE job_id = :id ORDER BY id DESC LIMIT 1", id=job_id)
    assert history_xmin == [(job_xmin,)]
    api.put(f"/job/{job_id}", headers=analyzer, json={"state": "aborted"})
    (job_xmin,) = sql("SELECT xmin::text FROM jobs WHERE id = :id", id=job_id)[0]
    event = sql(
        "SELECT xmin::text FROM outbox WHERE key = :k AND topic = :t ORDER BY id DESC LIMIT 1", k=job_id, t=EVENT_TOPIC
    )
    assert event == [(job_xmin,)]


def test_rolled_back_change_leaves_no_outbox_row(app, settings, make_job, sql):
    job_id = make_job()
    with app.app_context():
        session = db.session
        service.request_abort(session, settings, uuid.UUID(job_id), reason="x", actor=None)
        session.flush()
        assert session.scalar(sa.select(Job.state).where(Job.id == uuid.UUID(job_id))) == "aborted"
        session.rollback()
    assert sql("SELECT state FROM jobs WHERE id = :id", id=job_id) == [("enqueued",)]
    assert outbox(sql, job_id, ABORT_TOPIC) == []
    assert len(outbox(sql, job_id, EVENT_TOPIC)) == 1  # only the creation


def test_service_refuses_abort_of_a_finished_job(app, settings, make_job):
    job_id = uuid.UUID(make_job())
    with app.app_context():
        session = db.session
        service.update_job(session, settings, job_id, state="done", message=None, actor=None)
        session.commit()
        with pytest.raises(StateConflict, match="done"):
            service.request_abort(session, settings, job_id, reason=None, actor=None)
        session.rollback()
