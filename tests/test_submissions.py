"""Submission intake without a worker: payload validation, idempotent ingest, the REST upload's checks."""

from __future__ import annotations

import copy
import json
import random
import uuid

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.intake import ingest, trigger, upload, validation
from app.models import Job, JobHistory, OutboxMessage
from tests.support.payloads import SAMPLE_SHA256, submission_payload

OTHER_SHA256 = "a" * 64
SEED_SUBMISSION_KEYS = {
    "id",
    "customer",
    "sample",
    "createdByUser",
    "createdTimestamp",
    "name",
    "timestamp",
    "mimeType",
    "metaData",
    "tlp",
    "acl",
    "userAgent",
}
SEED_CLASSIFICATION_KEYS = {
    "sample",
    "classificationID",
    "createdTimestamp",
    "version",
    "type",
    "superType",
    "arch",
    "platform",
    "meta",
}


def _errors(payload) -> dict:
    with pytest.raises(validation.InvalidSubmission) as caught:
        validation.validate_payload(payload)
    return caught.value.messages


# -- validation --------------------------------------------------------------------------------


def test_a_seed_shaped_payload_is_kept_as_received():
    payload = submission_payload()
    assert validation.validate_payload(copy.deepcopy(payload)) == payload


def test_optional_fields_are_filled_in():
    payload = {
        "submission": {"id": str(uuid.uuid4()), "customer": "acme", "sample": {"id": SAMPLE_SHA256.upper()}},
        "classification": {"type": "PE", "superType": "executable"},
    }
    data = validation.validate_payload(payload)
    assert set(data["submission"]) == SEED_SUBMISSION_KEYS
    assert set(data["classification"]) == SEED_CLASSIFICATION_KEYS
    assert data["submission"]["sample"]["id"] == SAMPLE_SHA256  # lower case
    assert data["classification"]["sample"] == SAMPLE_SHA256
    uuid.UUID(data["classification"]["classificationID"])
    assert data["classification"]["createdTimestamp"] > 1_600_000_000_000
    assert data["submission"]["createdTimestamp"] > 1_600_000_000_000


@pytest.mark.parametrize(
    "path, value",
    [
        (("submission", "id"), "not-a-uuid"),
        (("submission", "customer"), ""),
        (("submission", "customer"), 42),
        (("submission", "sample", "id"), "abc"),
        (("submission", "tlp"), "purple"),
        (("submission", "name"), "x" * 1025),
        (("submission", "mimeType"), "x" * 1025),
        (("submission", "timestamp"), "yesterday"),
        (("submission", "timestamp"), True),
        (("submission", "createdTimestamp"), -1),
        (("submission", "createdTimestamp"), 1.5),
        (("submission", "metaData"), {"blob": "x" * (64 * 1024)}),
        (("submission", "metaData"), ["not", "an", "object"]),
        (("submission", "metaData"), {"score": float("nan")}),
        (("submission", "acl"), [float("inf")]),
        (("classification", "meta"), {"x": float("-inf")}),
        (("submission", "acl"), "everyone"),
        (("submission", "surprise"), "nul \u0000 in a field the service does not know"),
        (("submission", "surprise"), {"deep": [float("nan")]}),
        (("classification", "type"), None),
        (("classification", "superType"), "x" * 1025),
        (("classification", "classificationID"), "nope"),
        (("classification", "sample"), OTHER_SHA256),
        (("classification", "meta"), {"blob": "x" * (64 * 1024)}),
    ],
)
def test_a_bad_field_is_named(path, value):
    payload = submission_payload()
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = _errors(payload)
    node = errors
    for key in path[:-1]:
        assert key in node, errors
        node = node[key]
    assert path[-1] in node, errors


def test_fields_the_service_does_not_know_are_kept_as_received():
    """The Celery path is a tolerant reader (SPEC 10.2): an upstream upgrade must not lose submissions."""
    payload = submission_payload()
    payload["submission"]["origin"] = {"region": "eu-north", "hops": [1, 2]}
    payload["submission"]["userAgent"]["build"] = "2026.11"
    payload["submission"]["sample"]["md5"] = "d41d8cd98f00b204e9800998ecf8427e"
    payload["classification"]["confidence"] = 0.93
    payload["envelopeVersion"] = 3  # beside submission and classification: no place in a job
    data = validation.validate_payload(copy.deepcopy(payload))
    del payload["envelopeVersion"]
    assert data == payload


@pytest.mark.parametrize(
    "missing",
    [
        ("submission",),
        ("classification",),
        ("submission", "id"),
        ("submission", "customer"),
        ("submission", "sample"),
        ("classification", "type"),
        ("classification", "superType"),
    ],
)
def test_required_fields(missing):
    payload = submission_payload()
    target = payload
    for key in missing[:-1]:
        target = target[key]
    del target[missing[-1]]
    _errors(payload)


@pytest.mark.parametrize("payload", [None, [], "text", 42, {"submission": "x", "classification": []}])
def test_not_a_payload(payload):
    _errors(payload)


def test_tlp_is_case_insensitive():
    payload = submission_payload()
    payload["submission"]["tlp"] = "AMBER"
    assert validation.validate_payload(payload)["submission"]["tlp"] == "amber"


def test_metadata_may_be_64_kib():
    payload = submission_payload()
    payload["submission"]["metaData"] = {"blob": "x" * (64 * 1024 - 20)}
    validation.validate_payload(payload)


def test_job_id_is_derived_from_the_submission_id():
    submission_id = uuid.uuid4()
    assert ingest.job_id_for(submission_id) == ingest.job_id_for(str(submission_id).upper())
    assert ingest.job_id_for(submission_id) != ingest.job_id_for(uuid.uuid4())
    assert ingest.job_id_for(submission_id).version == 5


# -- ingest (in process) -----------------------------------------------------------------------


def test_ingest_is_idempotent_on_the_submission_id(app, settings):
    payload = submission_payload(customer="brand-new-customer")
    with app.app_context():
        results = []
        for _ in range(3):
            result = ingest.ingest(db.session, settings, copy.deepcopy(payload))
            results.append((result.job_id, result.created))
            db.session.commit()
        job_id = ingest.job_id_for(payload["submission"]["id"])
        assert results == [(job_id, True), (job_id, False), (job_id, False)]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1
        creation = db.session.scalars(sa.select(OutboxMessage).where(OutboxMessage.topic == settings.job_topic)).all()
        assert len(creation) == 1
        assert creation[0].key == str(job_id)
        assert creation[0].value["submission"] == payload["submission"]
        job = db.session.get(Job, job_id)
        assert job.customer.short_name == "brand-new-customer"
        assert [t["worker"] for t in creation[0].value["tasks"]] == sorted(t.worker for t in job.tasks)


def test_ingest_many_drops_invalid_payloads_and_repeats(app, settings):
    payloads = [submission_payload(customer=f"c{i % 3}") for i in range(20)]
    payloads.append(copy.deepcopy(payloads[0]))  # a repeat within the batch
    payloads.append({"submission": {"id": "broken"}})
    with app.app_context():
        results = ingest.ingest_many(db.session, settings, payloads)
        db.session.commit()
        again = ingest.ingest_many(db.session, settings, payloads[:5])
        db.session.commit()
        assert sum(r.created for r in results) == 20
        assert [r.errors is not None for r in results].count(True) == 1
        assert not any(r.created for r in again)
        assert {r.job_id for r in again} == {ingest.job_id_for(p["submission"]["id"]) for p in payloads[:5]}
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 20
        assert (
            db.session.scalar(
                sa.select(sa.func.count()).select_from(OutboxMessage).where(OutboxMessage.topic == settings.job_topic)
            )
            == 20
        )
        assert db.session.scalar(sa.select(sa.func.count()).select_from(JobHistory)) == 20


def test_a_sample_no_worker_accepts_gets_the_fallback_worker(app, settings, sql):
    sql("UPDATE analysis_workers SET deleted = true")
    with app.app_context():
        job_id = ingest.ingest(db.session, settings, submission_payload()).job_id
        db.session.commit()
        assert [t.worker for t in db.session.get(Job, job_id).tasks] == [settings.fallback_worker]


# -- REST upload, with what it commits for the workers captured -------------------------------


@pytest.fixture
def queued(monkeypatch):
    """The payloads the REST intake committed for the workers, one per accepted POST (no worker is woken)."""
    accepted = []
    accept = upload.accept_upload

    def accepting(session, payload, **options):
        accept(session, payload, **options)
        accepted.append(payload)

    monkeypatch.setattr(upload, "accept_upload", accepting)
    monkeypatch.setattr(trigger, "trigger_ingest", lambda settings: None)
    return accepted


def _path(sha256: str = SAMPLE_SHA256) -> str:
    return f"/sample/{sha256}/submission"


def _body(**classification) -> dict:
    return {"classification": {"type": "PE", "superType": "executable", "platform": "win", **classification}}


def test_upload_fills_the_submission_and_answers_the_job_id(api, make_key, queued):
    headers = make_key("UPLOADER", customer="acme", user="uploader-1")
    body = api.post(_path(SAMPLE_SHA256.upper()), 202, headers=headers, json=_body())
    data = body["data"]
    submission = data["submission"]
    assert data["jobID"] == str(ingest.job_id_for(submission["id"]))
    assert submission["customer"] == "acme"
    assert submission["sample"] == {"id": SAMPLE_SHA256}
    assert submission["createdByUser"]["shortName"] == "uploader-1"
    assert submission["createdByUser"]["customer"]["shortName"] == "acme"
    assert submission["createdTimestamp"] > 1_600_000_000_000
    assert set(submission) == SEED_SUBMISSION_KEYS
    assert len(queued) == 1
    assert queued[0]["submission"] == submission
    assert queued[0]["classification"]["sample"] == SAMPLE_SHA256
    assert set(queued[0]["classification"]) == SEED_CLASSIFICATION_KEYS
    validation.validate_payload(queued[0])  # what the task will accept


def test_upload_retry_with_the_same_submission_id_gets_the_same_job_id(api, make_key, queued):
    headers = make_key("UPLOADER")
    submission_id = str(uuid.uuid4())
    body = {
        **_body(),
        "submission": {
            "id": submission_id,
            "name": "a.exe",
            "tlp": "green",
            "metaData": {"k": "v"},
            "userAgent": {"name": "curl", "version": "8"},
        },
    }
    first = api.post(_path(), 202, headers=headers, json=body)["data"]
    second = api.post(_path(), 202, headers=headers, json=body)["data"]
    assert first["jobID"] == second["jobID"] == str(ingest.job_id_for(submission_id))
    assert first["submission"]["id"] == submission_id
    assert first["submission"]["name"] == "a.exe" and first["submission"]["tlp"] == "green"
    assert len(queued) == 2


def test_upload_for_another_customer(api, make_key, queued):
    granted = make_key("UPLOADER", customer="acme", grant_customers=("globex",))
    assert (
        api.post(_path(), 202, headers=granted, json={**_body(), "submission": {"customer": "globex"}})["data"][
            "submission"
        ]["customer"]
        == "globex"
    )
    body = api.post(_path(), 412, headers=granted, json={**_body(), "submission": {"customer": "initech"}})
    assert [m["field"] for m in body["messages"]] == ["submission.customer"]
    everyone = make_key("ANALYZER", customer="mnemonic", all_customers=True)
    assert (
        api.post(_path(), 202, headers=everyone, json={**_body(), "submission": {"customer": "first-seen"}})["data"][
            "submission"
        ]["customer"]
        == "first-seen"
    )
    assert len(queued) == 2


@pytest.mark.parametrize(
    "path, body, field",
    [
        (_path("not-a-hash"), _body(), "sha256"),
        (_path("g" * 64), _body(), "sha256"),
        (_path(), {**_body(), "submission": {"sample": {"id": OTHER_SHA256}}}, "submission.sample.id"),
        (_path(), _body(sample=OTHER_SHA256), "classification.sample"),
        (_path(), {"classification": {"type": "PE"}}, "classification.superType"),
        (_path(), {**_body(), "submission": {"tlp": "purple"}}, "submission.tlp"),
        (_path(), {**_body(), "submission": {"id": "nope"}}, "submission.id"),
        (_path(), {**_body(), "submission": {"name": "x" * 1025}}, "submission.name"),
        (_path(), {**_body(), "unknown": 1}, "unknown"),
    ],
)
def test_upload_argument_errors(api, make_key, queued, path, body, field):
    body = api.post(path, 412, headers=make_key("UPLOADER"), json=body)
    assert field in [m["field"] for m in body["messages"]], body["messages"]
    assert all(m["type"] == "FIELD_ERROR" for m in body["messages"])
    assert queued == []


def test_a_customer_name_too_large_for_its_index_is_412_naming_the_field(api, make_key, queued):
    """It was stored and answered 202, then PostgreSQL refused it (SQLSTATE 54000: the unique index on
    customers.short_name takes about 2,700 bytes): a permanent refusal the client could not see."""
    chooser = random.Random(8)
    name = "".join(chr(chooser.randrange(0x10000, 0x10FFFF)) for _ in range(1024))  # 4 KiB that do not compress
    everyone = make_key("UPLOADER", customer="mnemonic", all_customers=True)
    body = api.post(_path(), 412, headers=everyone, json={**_body(), "submission": {"customer": name}})
    assert [(m["type"], m["field"]) for m in body["messages"]] == [("FIELD_ERROR", "submission.customer")]
    assert "bytes of UTF-8" in body["messages"][0]["message"]
    assert queued == []


@pytest.mark.parametrize(
    "raw",
    [
        '{"classification": {"type": "PE", "superType": "x", "meta": {"a": NaN}}}',
        '{"classification": {"type": "PE", "superType": "x"}, "submission": {"metaData": {"a": Infinity}}}',
        '{"classification": {"type": "PE", "superType": "x", "meta": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}}",
        '{"classification": {"type": "PE", "superType": "x"}, "submission": null}',
        '{"classification": {"type": "PE", "superType": "x"}, "submission": {"timestamp": 1e400}}',
        '{"classification": {"type": "PE", "superType": "x"}, "submission": {"timestamp": 1234567890123456789012345}}',
        '{"classification": {"type": "PE", "superType": "x"}, "submission": {"name": "a\\u0000b"}}',
        "[]",
        '"x"',
        '{"classification": []}',
        '{"classification": {"type": "PE", "superType": "x"}, "submission": []}',
    ],
)
def test_upload_of_odd_json_is_refused_not_a_500(client, make_key, queued, raw):
    response = client.post(
        f"/sampledb/v2{_path()}", data=raw, headers={**make_key("UPLOADER"), "Content-Type": "application/json"}
    )
    assert response.status_code in (400, 412), response.get_json()
    assert queued == []


def test_upload_needs_the_uploader_role(api, make_key, queued):
    api.post(_path(), 401, json=_body())
    api.post(_path(), 403, headers=make_key("VIEWER"), json=_body())
    for role in ("UPLOADER", "USER", "ANALYZER"):
        api.post(_path(), 202, headers=make_key(role), json=_body())
    assert len(queued) == 3


def test_upload_when_the_queue_is_down_is_committed_and_accepted(api, make_key, sql):
    # The session's API settings point Redis at a closed port: the submission waits in PostgreSQL
    # for beat's safety net (sampledb.ingest_pending), so the 202 holds.
    body = _body()
    answer = api.post(_path(), 202, headers=make_key("UPLOADER"), json=body)["data"]
    pending = sql("SELECT submission_id, customer, payload FROM pending_submissions")
    assert [(str(r.submission_id), r.customer) for r in pending] == [(answer["submission"]["id"], "acme")]
    assert pending[0].payload["submission"] == answer["submission"]


# -- §10.5: a submission id is an idempotency key of one customer ----------------------------


def test_a_submission_id_sent_for_another_customer_is_409_and_reveals_nothing(
    app, settings, api, make_key, queued, sql
):
    submission_id = str(uuid.uuid4())
    body = {**_body(), "submission": {"id": submission_id, "name": "quarterly-report.exe"}}
    first = api.post(_path(), 202, headers=make_key("UPLOADER", customer="acme", user="alice"), json=body)["data"]
    other = make_key("UPLOADER", customer="globex", user="bob")

    def refused() -> dict:
        answer = api.post(_path(), 409, headers=other, json=body)
        assert [(m["type"], m["field"]) for m in answer["messages"]] == [("FIELD_ERROR", "submission.id")]
        text = json.dumps(answer)
        for secret in (first["jobID"], "acme", "alice", "quarterly-report"):
            assert secret not in text, secret
        return answer

    waiting = refused()  # while the submission waits for a worker
    with app.app_context():
        ingest.ingest(db.session, settings, queued[0])
        db.session.commit()
    made = refused()  # and once its job is made: the same answer
    assert waiting["messages"][0]["message"] == made["messages"][0]["message"]
    # The owner's retry is still answered with its job.
    again = api.post(_path(), 202, headers=make_key("UPLOADER", customer="acme"), json=body)["data"]
    assert again["jobID"] == first["jobID"]
    assert sql("SELECT c.short_name FROM jobs j JOIN customers c ON c.id = j.customer_id") == [("acme",)]
    assert len(queued) == 2


def test_the_celery_path_refuses_a_submission_id_of_another_customer(app, settings, sql):
    payload = submission_payload(customer="acme")
    foreign = {**payload, "submission": {**payload["submission"], "customer": "globex"}}
    with app.app_context():
        made = ingest.ingest(db.session, settings, payload)
        db.session.commit()
        with pytest.raises(ingest.SubmissionIdTaken):
            ingest.ingest(db.session, settings, foreign)
        db.session.rollback()
        results = ingest.ingest_many(db.session, settings, [foreign, submission_payload(customer="globex")])
        db.session.commit()
    assert made.created and results[0].id_taken and results[0].job_id is None and results[1].created
    owners = sql(
        "SELECT j.id, c.short_name FROM jobs j JOIN customers c ON c.id = j.customer_id WHERE j.submission_id = :s",
        s=payload["submission"]["id"],
    )
    assert owners == [(made.job_id, "acme")]


def test_the_intake_reaches_jobs_through_indexes(app, settings, api, make_key, queued):
    """Every statement a REST submission and its ingest send to the jobs table can use an index: the
    idempotency lookup by submission id must not scan a table of a million jobs per request (the partial
    unique index on submission_id serves only queries that say NOT reanalysis)."""
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "jobs" in statement:
            statements.append((statement, parameters))

    engine = db.engine_of(app)
    headers = make_key("UPLOADER")
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        body = {**_body(), "submission": {"id": str(uuid.uuid4())}}
        api.post(_path(), 202, headers=headers, json=body)
        api.post(_path(), 202, headers=headers, json=body)  # the retry finds it waiting
        with app.app_context():
            ingest.ingest(db.session, settings, queued[0])
            db.session.flush()
            api.post(_path(), 202, headers=headers, json=body)  # and once its job is made
            db.session.rollback()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert any("submission_id" in statement for statement, _ in statements), statements
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # the test tables are tiny: ask whether an index can serve
        for statement, parameters in statements:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            # A full index scan that filters every row is a table scan by another name.
            filtered = [line for line in plan.splitlines() if "Filter:" in line and "submission_id" in line]
            assert "Seq Scan on jobs" not in plan and not filtered, f"{statement}\n{plan}"
