"""§4 sweeps at the service level: execution timeout, enqueued timeout, unconfirmed aborts."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as so

from app import clock as service_clock
from app.extensions import db
from app.jobs import service

pytestmark = pytest.mark.committing  # sweeps and analyzers race over sessions of their own

HOUR = 3_600_000
EVENT_TOPIC = "Sample.Analysis.Job.Event.OSL"


def now_ms() -> int:
    return service_clock.now_ms()


@pytest.fixture
def sweep(app, settings):
    """sweep(function, now=..., limit=..., **setting overrides) -> moved count, in a committed session."""

    def run(function, now: int | None = None, limit: int = 500, **overrides) -> int:
        with app.app_context():
            session = db.session
            moved = function(session, dataclasses.replace(settings, **overrides), now or now_ms(), limit)
            session.commit()
        return moved

    return run


@pytest.fixture
def executing(make_job, sql):
    """executing(last_updated=...) -> id of an executing job, one task executing, one done, last updated then."""

    def make(last_updated: int, **job) -> str:
        job_id = make_job(**job)
        sql(
            "UPDATE jobs SET state = 'executing', start_timestamp = :t, last_updated_timestamp = :t WHERE id = :id",
            t=last_updated,
            id=job_id,
        )
        sql(
            """UPDATE job_tasks SET state = CASE worker WHEN 'static-analyzer' THEN 'success' ELSE 'executing' END,
               start_timestamp = :t, last_updated_timestamp = :t WHERE job_id = :id""",
            t=last_updated,
            id=job_id,
        )
        return job_id

    return make


def state(sql, job_id):
    return sql("SELECT state FROM jobs WHERE id = :id", id=job_id)[0][0]


def task_states(sql, job_id):
    return dict(sql("SELECT worker, state FROM job_tasks WHERE job_id = :id", id=job_id))


def job_history(sql, job_id):
    return sql(
        "SELECT from_state, to_state, user_id, message FROM job_history WHERE job_id = :id AND task_id IS NULL "
        "ORDER BY id",
        id=job_id,
    )


def events(sql, job_id):
    return [
        r[0] for r in sql("SELECT value FROM outbox WHERE key = :k AND topic = :t ORDER BY id", k=job_id, t=EVENT_TOPIC)
    ]


def test_execution_timeout_sweep(sweep, executing, make_job, sql):
    now = now_ms()
    stale = executing(now - HOUR - 1)
    fresh = executing(now - HOUR + 60_000)
    waiting = make_job()
    assert sweep(service.sweep_execution_timeouts, now=now) == 1
    assert state(sql, stale) == "timeout"
    assert task_states(sql, stale) == {"static-analyzer": "success", "sandbox-windows": "timeout"}
    end = sql("SELECT end_timestamp FROM jobs WHERE id = :id", id=stale)[0][0]
    assert end >= now
    last = job_history(sql, stale)[-1]
    assert last[:3] == ("executing", "timeout", None) and "3600" in last[3]
    assert [(e["fromState"], e["toState"], e["user"]) for e in events(sql, stale)][-1] == ("executing", "timeout", None)
    task_history = sql(
        "SELECT from_state, to_state FROM job_history WHERE job_id = :id AND task_id IS NOT NULL", id=stale
    )
    assert task_history == [("executing", "timeout")]
    # Fresh and enqueued jobs are untouched, and a second run finds nothing.
    assert (state(sql, fresh), state(sql, waiting)) == ("executing", "enqueued")
    assert len(job_history(sql, fresh)) == 1 and len(events(sql, fresh)) == 1
    assert sweep(service.sweep_execution_timeouts, now=now) == 0
    assert len(job_history(sql, stale)) == 2


def test_execution_timeout_follows_the_setting(sweep, executing, sql):
    now = now_ms()
    job_id = executing(now - 120_000)
    assert sweep(service.sweep_execution_timeouts, now=now, execution_timeout_seconds=180) == 0
    assert sweep(service.sweep_execution_timeouts, now=now, execution_timeout_seconds=60) == 1
    assert state(sql, job_id) == "timeout"


def test_task_progress_keeps_a_job_from_timing_out(api, make_key, sweep, executing, sql):
    now = now_ms()
    job_id = executing(now - 2 * HOUR)
    task_id = sql("SELECT id FROM job_tasks WHERE job_id = :id AND state = 'executing'", id=job_id)[0][0]
    api.put(
        f"/job/{job_id}/task/{task_id}", headers=make_key("ANALYZER", all_customers=True), json={"state": "executing"}
    )
    assert sweep(service.sweep_execution_timeouts) == 0
    assert state(sql, job_id) == "executing"


def test_sweeps_work_in_bounded_batches_oldest_first(sweep, executing, sql):
    now = now_ms()
    jobs = [executing(now - 5 * HOUR + i * 1000) for i in range(5)]
    assert sweep(service.sweep_execution_timeouts, now=now, limit=2) == 2
    assert [state(sql, j) for j in jobs] == ["timeout", "timeout", "executing", "executing", "executing"]
    assert sweep(service.sweep_execution_timeouts, now=now, limit=2) == 2
    assert sweep(service.sweep_execution_timeouts, now=now, limit=2) == 1
    assert sweep(service.sweep_execution_timeouts, now=now, limit=2) == 0


def test_enqueued_timeout_sweep(sweep, make_job, sql):
    now = now_ms()
    old = make_job()
    young = make_job()
    sql(
        "UPDATE jobs SET enqueued_timestamp = :t, last_updated_timestamp = :t WHERE id = :id",
        t=now - 86_400_000 - 1,
        id=old,
    )
    sql(
        "UPDATE jobs SET enqueued_timestamp = :t, last_updated_timestamp = :t WHERE id = :id",
        t=now - 86_400_000 + 60_000,
        id=young,
    )
    # 0 means never.
    assert sweep(service.sweep_enqueued_timeouts, now=now, enqueued_timeout_seconds=0) == 0
    assert state(sql, old) == "enqueued"
    assert sweep(service.sweep_enqueued_timeouts, now=now) == 1
    assert (state(sql, old), state(sql, young)) == ("timeout", "enqueued")
    assert set(task_states(sql, old).values()) == {"timeout"}
    assert job_history(sql, old)[-1][:3] == ("enqueued", "timeout", None)
    assert (events(sql, old)[-1]["fromState"], events(sql, old)[-1]["toState"]) == ("enqueued", "timeout")


def test_unconfirmed_abort_sweep(api, make_key, sweep, executing, sql):
    now = now_ms()
    headers = make_key("ANALYZER", all_customers=True)
    unconfirmed = executing(now)
    pending = executing(now)
    for job_id in (unconfirmed, pending):
        api.delete(f"/job/{job_id}", headers=headers, json={"reason": "stop"})
    sql("UPDATE jobs SET abort_requested_timestamp = :t WHERE id = :id", t=now - 301_000, id=unconfirmed)
    sql("UPDATE jobs SET abort_requested_timestamp = :t WHERE id = :id", t=now - 200_000, id=pending)
    assert sweep(service.sweep_unconfirmed_aborts, now=now) == 1
    assert (state(sql, unconfirmed), state(sql, pending)) == ("aborted", "executing")
    assert task_states(sql, unconfirmed) == {"static-analyzer": "success", "sandbox-windows": "cancelled"}
    last = job_history(sql, unconfirmed)[-1]
    assert last[:3] == ("executing", "aborted", None) and "300" in last[3]
    assert events(sql, unconfirmed)[-1]["toState"] == "aborted"
    job = api.get(f"/job/{unconfirmed}", headers=headers)["data"]
    assert job["flags"] == [] and job["abortReason"] == "stop"
    # An executing job without an abort request is never aborted by this sweep.
    plain = executing(now - 10 * HOUR)
    assert sweep(service.sweep_unconfirmed_aborts, now=now, abort_grace_seconds=1) == 1
    assert state(sql, plain) == "executing"


def test_two_sweeps_at_once_move_each_job_once(app, settings, executing, sql):
    now = now_ms()
    jobs = [executing(now - 2 * HOUR - i) for i in range(6)]
    with app.app_context():
        first, second = so.Session(db.engine), so.Session(db.engine)
        try:
            moved_first = service.sweep_execution_timeouts(first, settings, now, 4)
            # The second sweep runs while the first still holds its rows: it skips them, never waits
            # (a wait for their locks would fail on the lock timeout instead of passing slowly).
            second.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))
            moved_second = service.sweep_execution_timeouts(second, settings, now, 500)
            second.commit()
            first.commit()
        finally:
            first.close()
            second.close()
    assert (moved_first, moved_second) == (4, 2)
    assert {state(sql, j) for j in jobs} == {"timeout"}
    for job_id in jobs:
        assert [h[:2] for h in job_history(sql, job_id)] == [(None, "enqueued"), ("executing", "timeout")]
        assert len(events(sql, job_id)) == 2


def test_sweep_does_not_override_a_concurrent_final_update(app, settings, executing, sql):
    now = now_ms()
    job_id = executing(now - 2 * HOUR)
    with app.app_context():
        analyzer, sweeper = so.Session(db.engine), so.Session(db.engine)
        try:
            service.update_job(analyzer, settings, uuid.UUID(job_id), state="done", message=None, actor=None)
            analyzer.flush()  # holds the row lock
            assert service.sweep_execution_timeouts(sweeper, settings, now, 10) == 0  # skipped, not waited for
            analyzer.commit()
            sweeper.commit()
            # Once the update committed, the job is no longer a candidate.
            assert service.sweep_execution_timeouts(sweeper, settings, now, 10) == 0
            sweeper.commit()
        finally:
            analyzer.close()
            sweeper.close()
    assert state(sql, job_id) == "done"


@pytest.mark.parametrize(
    "function, index",
    [
        (service.sweep_execution_timeouts, "ix_jobs_executing_last_updated"),
        (service.sweep_enqueued_timeouts, "ix_jobs_enqueued_enqueued"),
        (service.sweep_unconfirmed_aborts, "ix_jobs_abort_pending"),
    ],
)
def test_sweep_query_uses_its_partial_index(app, settings, make_job, sql, function, index):
    make_job()
    # A realistic table: many finished jobs, a few active ones; the sweep must not scan the finished ones.
    sql("""
        INSERT INTO jobs (id, state, abort_requested, site, sample_sha256, customer_id, submission_id,
                          submission, classification, enqueued_timestamp, last_updated_timestamp,
                          abort_requested_timestamp)
        SELECT gen_random_uuid(), CASE WHEN i % 500 = 0 THEN 'executing' WHEN i % 500 = 1 THEN 'enqueued'
                                       ELSE 'done' END,
               i % 1000 = 0, 'OSL', repeat('a', 64), (SELECT min(id) FROM customers), gen_random_uuid(),
               '{}'::jsonb, '{}'::jsonb, i, i, CASE WHEN i % 1000 = 0 THEN i END
        FROM generate_series(1, 20000) AS i
    """)
    sql("ANALYZE jobs")
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FOR UPDATE" in statement:
            statements.append((statement, parameters))

    sa.event.listen(db.engine_of(app), "before_cursor_execute", capture)
    try:
        with app.app_context():
            session = db.session
            function(session, settings, now_ms(), 500)
            session.rollback()
    finally:
        sa.event.remove(db.engine_of(app), "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    with db.engine_of(app).connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert index in plan, plan
    assert "Seq Scan on jobs" not in plan, plan
