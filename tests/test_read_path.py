"""GET /job/{id} and the search pages answer byte for byte what the ORM serializer makes of the same jobs.

The reference is `job_to_dict(service.get_job(...))` in the envelope: the ORM objects the
write paths still answer with. The data covers every field the API shows: jobs in each
state, tasks with analyses and messages, abort requests (pending and done) by users of
customers with and without a domain, a heartbeat's last-updating user, non-ASCII text.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.api.envelope import envelope
from app.extensions import db
from app.jobs import service
from app.jobs.serialize import job_to_dict

BASE = "/sampledb/v2"
# Committed for real: the reads run on connections of their own (autocommit), as in the service.
pytestmark = pytest.mark.committing


def _orm_answer(app, job_ids: list[str], **list_fields) -> bytes:
    """The envelope the ORM serializer makes: one job, or a list page with its count/limit/offset."""
    with app.app_context():
        jobs = [job_to_dict(service.get_job(db.session, uuid.UUID(j))) for j in job_ids]
        body = envelope(jobs, **list_fields) if list_fields else envelope(jobs[0])
        db.session.rollback()
        return body.get_data()


@pytest.fixture
def jobs(api, make_key, make_job, sql) -> dict[str, str]:
    """One job of each kind, by name; keys of users whose customers have (and lack) a domain."""
    analyzer = make_key("ANALYZER", customer="analysis", user="analyzer", all_customers=True)
    alice = make_key("USER", customer="acme", user="alice")
    sql("UPDATE customers SET domain_id = 7, domain_name = 'Ålesund ✓' WHERE short_name = 'acme'")

    def tasks(job_id):
        return api.get(f"/job/{job_id}", headers=analyzer)["data"]["tasks"]

    def report(job_id, task, state, **extra):
        api.put(f"/job/{job_id}/task/{task['id']}", headers=analyzer, json={"state": state, **extra})

    made = {"enqueued": make_job(customer="acme"), "other_customer": make_job(customer="globex", platform="linux")}

    made["executing"] = make_job(customer="acme")
    first = tasks(made["executing"])[0]
    report(made["executing"], first, "executing", message="läuft — 50 %", analyses=[str(uuid.uuid4())])
    api.put(f"/job/{made['executing']}", headers=analyzer, json={"state": "executing"})  # a heartbeat

    made["done"] = make_job(customer="acme")
    for n, task in enumerate(tasks(made["done"])):
        report(
            made["done"],
            task,
            "success" if n == 0 else "failed",
            message=f'result {n} "quoted"\n',
            analyses=[str(uuid.uuid4()), str(uuid.uuid4())],
        )

    made["failed"] = make_job(customer="globex")
    api.put(f"/job/{made['failed']}", headers=analyzer, json={"state": "failed", "message": "analyzer gave up"})

    made["aborted"] = make_job(customer="acme")
    api.delete(f"/job/{made['aborted']}", headers=alice, json={"reason": "mis-submitted <script>"})

    made["abort_pending"] = make_job(customer="acme")
    report(made["abort_pending"], tasks(made["abort_pending"])[0], "executing")
    api.delete(f"/job/{made['abort_pending']}", headers=alice)

    made["timeout"] = make_job(customer="globex")
    sql(
        "UPDATE jobs SET state = 'timeout', end_timestamp = last_updated_timestamp, sample_size = 123456789012 "
        "WHERE id = :id",
        id=made["timeout"],
    )
    made["no_tasks"] = make_job(customer="acme")
    sql("DELETE FROM job_tasks WHERE job_id = :id", id=made["no_tasks"])
    return made


def test_get_job_answers_the_orm_serializers_bytes(app, client, make_key, jobs):
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    for name, job_id in jobs.items():
        response = client.get(f"{BASE}/job/{job_id}", headers=viewer)
        assert response.status_code == 200, (name, response.get_data())
        assert response.get_data() == _orm_answer(app, [job_id]), name


@pytest.mark.parametrize(
    "criteria",
    [
        {"state": []},
        {"state": [], "sortBy": ["-state", "customer"], "limit": 3, "offset": 2},
        {"state": ["enqueued", "executing"], "sortBy": ["-enqueuedTimestamp"]},
        {"customer": ["acme"], "state": ["aborted", "executing", "done"], "limit": 0},
    ],
)
def test_search_pages_answer_the_orm_serializers_bytes(app, client, make_key, jobs, criteria):
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    response = client.post(f"{BASE}/job/search", headers=viewer, json=criteria)
    assert response.status_code == 200, response.get_data()
    body = response.get_json()
    assert body["size"] >= 1
    page_ids = [job["id"] for job in body["data"]]
    expected = _orm_answer(app, page_ids, count=body["count"], limit=body["limit"], offset=body["offset"])
    assert response.get_data() == expected


def test_default_list_and_a_scoped_key_answer_the_orm_serializers_bytes(app, client, make_key, jobs):
    alice = make_key("VIEWER", customer="acme", user="alice-viewer")
    response = client.get(f"{BASE}/job", headers=alice)
    body = response.get_json()
    assert {job["customer"]["shortName"] for job in body["data"]} == {"acme"}
    assert response.get_data() == _orm_answer(
        app, [j["id"] for j in body["data"]], count=body["count"], limit=body["limit"], offset=body["offset"]
    )
    # A job of another customer is not found for this key, by either path.
    assert client.get(f"{BASE}/job/{jobs['other_customer']}", headers=alice).status_code == 404


def test_reads_run_in_autocommit_mode_without_a_transaction(app, client, make_key, jobs):
    """A read is its SELECTs alone: psycopg sends no BEGIN (and so no ROLLBACK) on an autocommit connection."""
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    client.get(f"{BASE}/job/{jobs['done']}", headers=viewer)  # the key is cached from here on
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement.split()[0], conn.connection.dbapi_connection.autocommit))

    engine = db.engine_of(app)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(f"{BASE}/job/{jobs['done']}", headers=viewer).status_code == 200
        assert client.post(f"{BASE}/job/search", headers=viewer, json={"state": []}).status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert seen and all(kind == "SELECT" and autocommit for kind, autocommit in seen), seen


def test_connections_the_server_dropped_fail_one_request_then_are_replaced(client, make_key, jobs, sql):
    """No pre-ping: a dropped connection is noticed when used; SQLAlchemy then replaces the whole pool."""
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    path = f"{BASE}/job/{jobs['done']}"
    assert client.get(path, headers=viewer).status_code == 200
    dropped = sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )[0][0]
    assert dropped >= 1
    first = client.get(path, headers=viewer)
    assert first.status_code in (200, 500, 503) and first.get_json()["responseCode"] == first.status_code
    assert [client.get(path, headers=viewer).status_code for _ in range(3)] == [200, 200, 200]
