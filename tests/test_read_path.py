"""GET /job/{id} and the search pages answer what the ORM serializer makes of the same jobs, after JSON parsing.

The reference is `job_to_dict(service.get_job(...))` in the envelope: the ORM objects the
write paths still answer with. The data covers every field the API shows: jobs in each
state, tasks with analyses and messages, abort requests (pending and done) by users of
customers with and without a domain, a heartbeat's last-updating user, non-ASCII text; and random
jobs (hypothesis) with values of every JSON type and huge metaData. PostgreSQL writes the reads'
JSON, so the bytes differ (UTF-8 instead of `\\u` escapes, its own spacing): what must be equal is
what a client parses.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.api.envelope import envelope
from app.dev import synthetic
from app.extensions import db
from app.jobs import service
from app.jobs.serialize import job_to_dict

BASE = "/sampledb/v2"
# Committed for real: the reads run on connections of their own (autocommit), as in the service.
pytestmark = pytest.mark.committing


def _orm_answer(app, job_ids: list[str], **list_fields) -> dict:
    """The envelope the ORM serializer makes: one job, or a list page with its count/limit/offset."""
    with app.app_context():
        jobs = [job_to_dict(service.get_job(db.session, uuid.UUID(j))) for j in job_ids]
        body = envelope(jobs, **list_fields) if list_fields else envelope(jobs[0])
        db.session.rollback()
        return json.loads(body.get_data())


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


def test_get_job_answers_the_orm_serializers_json(app, client, make_key, jobs):
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    for name, job_id in jobs.items():
        response = client.get(f"{BASE}/job/{job_id}", headers=viewer)
        assert response.status_code == 200, (name, response.get_data())
        assert json.loads(response.get_data()) == _orm_answer(app, [job_id]), name


@pytest.mark.parametrize(
    "criteria",
    [
        {"state": []},
        {"state": [], "sortBy": ["-state", "customer"], "limit": 3, "offset": 2},
        {"state": ["enqueued", "executing"], "sortBy": ["-enqueuedTimestamp"]},
        {"customer": ["acme"], "state": ["aborted", "executing", "done"], "limit": 0},
    ],
)
def test_search_pages_answer_the_orm_serializers_json(app, client, make_key, jobs, criteria):
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    response = client.post(f"{BASE}/job/search", headers=viewer, json=criteria)
    assert response.status_code == 200, response.get_data()
    body = response.get_json()
    assert body["size"] >= 1
    page_ids = [job["id"] for job in body["data"]]
    expected = _orm_answer(app, page_ids, count=body["count"], limit=body["limit"], offset=body["offset"])
    assert body == expected


def test_default_list_and_a_scoped_key_answer_the_orm_serializers_json(app, client, make_key, jobs):
    alice = make_key("VIEWER", customer="acme", user="alice-viewer")
    response = client.get(f"{BASE}/job", headers=alice)
    body = response.get_json()
    assert {job["customer"]["shortName"] for job in body["data"]} == {"acme"}
    assert body == _orm_answer(
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


# What PostgreSQL can store (no NUL, no lone surrogates; JSONB has no NaN or infinities), outside ASCII too.
storable_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        storable_text,
    ),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(storable_text, children, max_size=4)),
    max_leaves=20,
)
huge_meta_data = st.builds(lambda text: {f"key-{n} ✓": text * 50 + str(n) for n in range(400)}, storable_text)


@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meta_data=st.one_of(st.dictionaries(storable_text, json_values, max_size=6), huge_meta_data),
    name=storable_text,
    state=st.sampled_from(["enqueued", "executing", "done", "failed", "aborted", "timeout"]),
    abort_requested=st.booleans(),
    texts=st.lists(st.one_of(st.none(), storable_text), min_size=3, max_size=3),
    options=st.lists(st.fixed_dictionaries({"key": storable_text, "value": json_values}), max_size=3),
    sample_size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    task_text=st.one_of(st.none(), storable_text),
)
def test_random_jobs_answer_the_orm_serializers_json(
    app,
    client,
    make_key,
    make_job,
    sql,
    meta_data,
    name,
    state,
    abort_requested,
    texts,
    options,
    sample_size,
    task_text,
):
    """GET /job/{id} and a search for the job's sample answer the ORM serializer's JSON for random jobs: values of
    every JSON type in the submission and the options, huge metaData, text outside ASCII and control characters."""
    viewer = make_key("VIEWER", customer="analysis", user="viewer", all_customers=True)
    sha256 = hashlib.sha256(uuid.uuid4().bytes).hexdigest()  # not `random`'s: hypothesis seeds it per example
    payload = synthetic.submission_payload("acme ✓", sha256, name=name, meta_data=meta_data)
    job_id = make_job("acme ✓", payload=payload)
    message, abort_reason, analysis = texts
    sql(
        "UPDATE jobs SET state = :state, abort_requested = :abort, message = :message, abort_reason = :reason, "
        "options = CAST(:options AS jsonb), sample_size = :size WHERE id = :id",
        state=state,
        abort=abort_requested,
        message=message,
        reason=abort_reason,
        options=json.dumps(options),
        size=sample_size,
        id=job_id,
    )
    sql(
        "UPDATE job_tasks SET message = :message, analyses = CAST(:analyses AS jsonb) WHERE job_id = :id",
        message=task_text,
        analyses=json.dumps([analysis] if analysis is not None else []),
        id=job_id,
    )
    response = client.get(f"{BASE}/job/{job_id}", headers=viewer)
    assert response.status_code == 200, response.get_data()
    assert json.loads(response.get_data()) == _orm_answer(app, [str(job_id)])
    page = client.post(f"{BASE}/job/search", headers=viewer, json={"sampleSha256": [sha256], "state": []})
    assert json.loads(page.get_data()) == _orm_answer(app, [str(job_id)], count=1, limit=25, offset=0)
