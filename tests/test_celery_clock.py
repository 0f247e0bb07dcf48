"""A worker host whose clock is minutes off (SPEC 13.1): the time that decides anything is PostgreSQL's, so it
times nothing out early and writes no timestamp from the future."""

from __future__ import annotations

import glob
import re
from datetime import datetime

import pytest

from app.task_names import TaskNames
from tests.support.celery_worker import start_own_worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.celery

SKEW = "+5m"
EXECUTION_TIMEOUT_SECONDS = 120


def _libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


@pytest.fixture
def skewed_worker(database_url, redis_url, kafka_broker, tmp_path):
    """A second Celery worker whose clock (libfaketime, as on a host with a wrong clock) runs five minutes
    ahead, on a Redis database of its own so that only it takes the tasks sent to it."""
    library = _libfaketime()
    if library is None:
        pytest.skip("libfaketime is not installed: the skewed-clock test did not run (apt-get install faketime)")
    worker, sender = start_own_worker(
        database_url,
        redis_url,
        kafka_broker.url,
        tmp_path,
        "skewed",
        SAMPLEDB_EXECUTION_TIMEOUT_SECONDS=str(EXECUTION_TIMEOUT_SECONDS),
        LD_PRELOAD=library,
        FAKETIME=SKEW,
        FAKETIME_DONT_FAKE_MONOTONIC="1",  # timers and timeouts run as usual; only the wall clock is off
    )
    yield worker, sender
    worker.stop()


def _database_now_ms(sql) -> int:
    return sql("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")[0][0]


def test_a_worker_whose_clock_is_five_minutes_ahead_times_out_nothing_early(skewed_worker, make_job, sql):
    worker, sender = skewed_worker
    # The worker's own log lines carry its wall clock: the skew is in force.
    stamp = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ", worker.output())
    assert stamp and (datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S") - datetime.now()).total_seconds() > 240

    live, stale = make_job(customer="clock-live"), make_job(customer="clock-stale")
    now = _database_now_ms(sql)
    # An analyzer reported on `live` a minute ago (within the 2-minute timeout); `stale` went silent 10 minutes ago.
    for job_id, age_ms in ((live, 60_000), (stale, 600_000)):
        sql(
            "UPDATE jobs SET state = 'executing', start_timestamp = :t, last_updated_timestamp = :t WHERE id = :id",
            t=now - age_ms,
            id=job_id,
        )
    sender.send(TaskNames.SWEEP_EXECUTION_TIMEOUTS)

    def state(job_id: str):
        return sql("SELECT state, end_timestamp FROM jobs WHERE id = :id", id=job_id)[0]

    wait_for(lambda: state(stale).state == "timeout", 60, f"the stale job timed out; worker log:\n{worker.tail(40)}")
    after = _database_now_ms(sql)
    # On the worker's own clock the live job was 6 minutes silent: it would have timed out.
    assert state(live).state == "executing"
    # The end of the stale job is the database's time, not five minutes ahead of it.
    assert now - 5_000 <= state(stale).end_timestamp <= after + 1_000
    history = sql("SELECT max(timestamp) FROM job_history WHERE job_id = :id", id=stale)[0][0]
    assert history <= after + 1_000
