"""§9.1 retention on real PostgreSQL: what the purge deletes, what it never deletes, two purges at once, the CLI."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as so
from click.testing import CliRunner

from app.cli import main
from app.clock import now_ms
from app.jobs import service
from app.models import Job, OutboxMessage
from app.operations import retention
from tests.support.settings import make_settings

pytestmark = pytest.mark.committing  # the purge runs on connections of its own, two of them at once

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
FINAL = ("done", "failed", "timeout", "aborted")


@pytest.fixture
def retention_settings(database_url):
    # Small batches, so every purge below takes several of them.
    return make_settings(
        database_url,
        SAMPLEDB_OUTBOX_RETENTION_HOURS="1",
        SAMPLEDB_JOB_RETENTION_DAYS="1",
        SAMPLEDB_PURGE_BATCH_SIZE="3",
    )


def _ids(sql, table: str) -> set:
    return {row[0] for row in sql(f"SELECT id::text FROM {table}")}


def _set_job(sql, job_id: str, state: str, end: int | None, enqueued: int | None = None) -> None:
    sql(
        "UPDATE jobs SET state = :state, end_timestamp = :end, "
        "enqueued_timestamp = coalesce(:enqueued, enqueued_timestamp) WHERE id = CAST(:id AS uuid)",
        state=state,
        end=end,
        enqueued=enqueued,
        id=job_id,
    )


def _children(sql, job_ids) -> tuple[set, set]:
    tasks = {
        r[0] for r in sql("SELECT id::text FROM job_tasks WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=list(job_ids))
    }
    history = {
        r[0]
        for r in sql("SELECT id::text FROM job_history WHERE job_id = ANY(CAST(:ids AS uuid[]))", ids=list(job_ids))
    }
    return tasks, history


def _purge(settings, engine=None):
    with so.Session(engine or sa.create_engine(settings.database_url)) as session:
        return retention.purge(session, settings)


def test_purge_deletes_exactly_the_expired_rows_and_never_an_unsent_row_or_an_active_job(
    make_job, sql, retention_settings
):
    now = now_ms()
    year_ago = now - 365 * DAY_MS
    jobs = [make_job() for _ in range(12)]
    expired = jobs[:5]  # final, ended two days ago: past the one-day retention
    for job_id, state in zip(expired, FINAL + ("done",)):
        _set_job(sql, job_id, state, now - 2 * DAY_MS)
    recent = jobs[5:7]  # final, ended an hour ago
    for job_id in recent:
        _set_job(sql, job_id, "failed", now - HOUR_MS)
    # Active jobs a year old, one even with an end time set: never deleted.
    _set_job(sql, jobs[7], "executing", None, year_ago)
    _set_job(sql, jobs[8], "enqueued", None, year_ago)
    _set_job(sql, jobs[9], "executing", year_ago, year_ago)
    _set_job(sql, jobs[10], "enqueued", year_ago, year_ago)

    outbox = sorted(_ids(sql, "outbox"), key=int)
    assert len(outbox) >= 12
    sent_old, sent_recent, unsent_old = outbox[:7], outbox[7:9], outbox[9:]
    sql(
        "UPDATE outbox SET created_timestamp = :t, sent_timestamp = :t WHERE id = ANY(CAST(:ids AS bigint[]))",
        t=now - 2 * HOUR_MS,
        ids=sent_old,
    )
    sql(
        "UPDATE outbox SET sent_timestamp = :t WHERE id = ANY(CAST(:ids AS bigint[]))",
        t=now - 10 * 60 * 1000,
        ids=sent_recent,
    )
    sql(
        "UPDATE outbox SET created_timestamp = :t, sent_timestamp = NULL WHERE id = ANY(CAST(:ids AS bigint[]))",
        t=year_ago,
        ids=unsent_old,
    )

    expired_tasks, expired_history = _children(sql, expired)
    assert expired_tasks and len(expired_history) >= len(expired)
    tasks_before, history_before = _ids(sql, "job_tasks"), _ids(sql, "job_history")

    with so.Session(sa.create_engine(retention_settings.database_url)) as session:
        dry = retention.would_purge(session, retention_settings)
    assert _ids(sql, "jobs") == set(jobs)  # a dry run deletes nothing
    purged = _purge(retention_settings)

    assert _ids(sql, "jobs") == set(jobs) - set(expired)
    assert _ids(sql, "outbox") == set(sent_recent) | set(unsent_old)
    assert _ids(sql, "job_tasks") == tasks_before - expired_tasks
    assert _ids(sql, "job_history") == history_before - expired_history
    assert (
        purged.by_table()
        == dry.by_table()
        == {
            "outbox": len(sent_old),
            "jobs": len(expired),
            "job_tasks": len(expired_tasks),
            "job_history": len(expired_history),
        }
    )
    assert _purge(retention_settings).total == 0  # nothing left to purge


def test_jobs_are_kept_forever_by_default(make_job, sql, database_url):
    settings = make_settings(database_url, SAMPLEDB_PURGE_BATCH_SIZE="2")
    job_id = make_job()
    _set_job(sql, job_id, "done", now_ms() - 3650 * DAY_MS)
    sql("UPDATE outbox SET sent_timestamp = :t", t=now_ms() - 25 * HOUR_MS)  # past the default 24 hours
    messages = len(_ids(sql, "outbox"))
    purged = _purge(settings)
    assert (purged.jobs, purged.outbox) == (0, messages)
    assert _ids(sql, "jobs") == {job_id} and not _ids(sql, "outbox")


def test_two_purges_at_once_delete_each_row_once(make_job, sql, database_url):
    settings = make_settings(
        database_url,
        SAMPLEDB_OUTBOX_RETENTION_HOURS="1",
        SAMPLEDB_JOB_RETENTION_DAYS="1",
        SAMPLEDB_PURGE_BATCH_SIZE="7",
    )
    now = now_ms()
    jobs = [make_job() for _ in range(60)]
    sql("UPDATE jobs SET state = 'done', end_timestamp = :t", t=now - 2 * DAY_MS)
    sql(
        "INSERT INTO outbox (event_id, topic, key, value, created_timestamp, sent_timestamp, attempts, "
        "next_attempt_timestamp) SELECT gen_random_uuid(), 't', 'k', '{}'::jsonb, :t, :t, 1, 0 "
        "FROM generate_series(1, 500)",
        t=now - 2 * HOUR_MS,
    )
    sql("UPDATE outbox SET sent_timestamp = :t", t=now - 2 * HOUR_MS)
    expected = {
        "outbox": len(_ids(sql, "outbox")),
        "jobs": len(jobs),
        "job_tasks": len(_ids(sql, "job_tasks")),
        "job_history": len(_ids(sql, "job_history")),
    }

    engine = sa.create_engine(settings.database_url, pool_size=4)
    start = threading.Barrier(2)
    results, errors = [], []

    def run() -> None:
        try:
            start.wait()
            results.append(_purge(settings, engine))
        except Exception as err:  # reported below, with the thread's error
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    engine.dispose()
    assert not errors, errors
    assert len(results) == 2
    sums = {table: sum(r.by_table()[table] for r in results) for table in expected}
    assert sums == expected  # every row deleted, none counted twice
    assert not _ids(sql, "outbox") and not _ids(sql, "jobs") and not _ids(sql, "job_history")


def test_purge_command_prints_per_table_counts_and_dry_run_deletes_nothing(make_job, sql, database_url):
    job_id = make_job()
    _set_job(sql, job_id, "aborted", now_ms() - 3 * DAY_MS)
    sql("UPDATE outbox SET sent_timestamp = :t", t=now_ms() - 3 * DAY_MS)
    env = {"SAMPLEDB_DATABASE_URL": database_url, "SAMPLEDB_JOB_RETENTION_DAYS": "2"}
    messages, tasks, history = (len(_ids(sql, table)) for table in ("outbox", "job_tasks", "job_history"))

    def lines(result) -> dict[str, str]:
        assert result.exit_code == 0, result.output
        return {line.split()[0]: " ".join(line.split()[1:]) for line in result.output.splitlines()}

    dry = lines(CliRunner().invoke(main, ["purge", "--dry-run"], env=env, catch_exceptions=False))
    assert dry == {
        "outbox": f"would delete {messages}",
        "jobs": "would delete 1",
        "job_tasks": f"would delete {tasks}",
        "job_history": f"would delete {history}",
    }
    assert _ids(sql, "jobs") == {job_id}
    done = lines(CliRunner().invoke(main, ["purge"], env=env, catch_exceptions=False))
    assert done == {
        "outbox": f"deleted {messages}",
        "jobs": "deleted 1",
        "job_tasks": f"deleted {tasks}",
        "job_history": f"deleted {history}",
    }
    assert not _ids(sql, "jobs") and not _ids(sql, "outbox")


def test_the_purge_finds_its_rows_through_indexes(database_url):
    """The cost follows the rows deleted: the batches reach them through an index, never a scan of the
    table (sent outbox rows through ix_outbox_sent; final jobs through an index on their state, which at
    scale is ix_jobs_state_end: B6 measures the purge at a million jobs)."""
    engine = sa.create_engine(database_url)
    statements = {
        ("ix_outbox_sent",): sa.select(OutboxMessage.id).where(retention._expired_outbox(now_ms())).limit(3),
        # On the test's tiny tables the planner's costs of the two (state, ...) indexes tie.
        ("ix_jobs_state_end", "ix_jobs_state_start"): sa.select(Job.id).where(service.ended_before(now_ms())).limit(3),
    }
    with engine.connect() as conn:
        conn.execute(sa.text("SET enable_seqscan = off"))  # the test tables are tiny: ask which index can serve
        for indexes, statement in statements.items():
            sql_text = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(row[0] for row in conn.execute(sa.text("EXPLAIN " + sql_text)))
            assert "Seq Scan" not in plan and any(index in plan for index in indexes), plan
    engine.dispose()
