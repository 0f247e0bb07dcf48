"""Exactly one scheduler however many beat processes run (SPEC 13.1): the lease in PostgreSQL, and real
`celery beat` processes beside each other, one killed, one stopped."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import redis
import sqlalchemy as sa

from app.dev import commands
from app.dev.processes import Child
from app.extensions import db
from app.operations import scheduler_lease
from app.unit_of_work import unit_of_work
from tests.support.celery_worker import OWN_WORKER_REDIS_DB, ROOT, service_env
from tests.support.waiting import wait_for

LEASE_SECONDS = 2
INTERVAL_SECONDS = 1  # of every periodic task here: beat sends something every second


def _hold(app, holder: str, seconds: float = 30) -> bool:
    with app.app_context(), unit_of_work(db.session):
        return scheduler_lease.hold(db.session, holder, seconds)


def _lease(app) -> scheduler_lease.Lease | None:
    with app.app_context():
        return scheduler_lease.current(db.session)


def test_one_holder_at_a_time_renewal_keeps_it_release_hands_it_over(app):
    assert _hold(app, "host-a")
    first = _lease(app)
    assert first is not None and first.holder == "host-a"
    assert not _hold(app, "host-b"), "another beat took a lease that had not expired"
    assert _hold(app, "host-a"), "the holder could not renew"
    renewed = _lease(app)
    assert renewed.holder == "host-a"
    assert renewed.held_since_timestamp == first.held_since_timestamp
    assert renewed.expires_timestamp >= first.expires_timestamp

    with app.app_context(), unit_of_work(db.session):
        assert not scheduler_lease.release(db.session, "host-b"), "a beat released a lease it does not hold"
        assert scheduler_lease.release(db.session, "host-a")
    assert _hold(app, "host-b")
    assert _lease(app).holder == "host-b"


def test_an_expired_lease_goes_to_the_next_beat_that_asks(app):
    assert _hold(app, "host-a")
    with app.app_context(), unit_of_work(db.session):  # host-a stopped renewing a while ago
        db.session.execute(sa.text("UPDATE scheduler_leases SET expires_timestamp = expires_timestamp - 60000"))
    assert _hold(app, "host-b")
    taken = _lease(app)
    assert taken.holder == "host-b"
    assert not _hold(app, "host-a"), "the old holder came back and took the lease again"


def test_the_lease_is_decided_on_the_database_clock_not_the_host_clock(app, clock):
    """A beat host whose clock runs far ahead cannot see a live lease as expired."""
    assert _hold(app, "host-a", seconds=30)
    clock.shift(3600)  # this process's clock, as a host 1 h ahead sees it
    assert not _hold(app, "host-b")
    assert _lease(app).holder == "host-a"


class Beat(Child):
    def __init__(self, name: str, env: dict, directory):
        super().__init__(f"beat {name}", directory / f"beat-{name}.log")
        self.env, self.schedule = env, directory / f"schedule-{name}"

    def start(self) -> Beat:
        super().start(commands.celery("beat", "-l", "info", "--schedule", str(self.schedule)), env=self.env, cwd=ROOT)
        self.wait_until(lambda left: "beat: Starting..." in self.output(), 60, "started")
        return self


def _sent_by(broker: redis.Redis) -> Counter:
    """The periodic tasks waiting in the broker (no worker takes them here), counted by the pid that sent them."""
    senders: Counter = Counter()
    for key in broker.scan_iter():
        if broker.type(key) != b"list":
            continue
        for raw in broker.lrange(key, 0, -1):
            origin = json.loads(raw)["headers"]["origin"]  # gen<pid>@<host>
            senders[int(origin.split("@", 1)[0].removeprefix("gen"))] += 1
    return senders


@pytest.mark.committing
def test_a_second_beat_schedules_nothing_while_the_first_lives_and_takes_over_when_it_dies(
    database_url, redis_url, kafka_bootstrap, tmp_path
):
    own_redis = redis_url.rsplit("/", 1)[0] + f"/{OWN_WORKER_REDIS_DB}"
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    intervals = {
        f"SAMPLEDB_{name}_INTERVAL_SECONDS": str(INTERVAL_SECONDS)
        for name in ("SWEEP", "OUTBOX_RELAY", "PENDING_INGEST", "PURGE")
    }
    env = service_env(
        database_url,
        own_redis,
        kafka_bootstrap,
        broker_url=own_redis,
        SAMPLEDB_SCHEDULER_LEASE_SECONDS=str(LEASE_SECONDS),
        **intervals,
    )
    first, second, third = (Beat(name, env, tmp_path) for name in ("first", "second", "third"))
    try:
        first.start()
        wait_for(lambda: _sent_by(broker)[first.pid] >= 5, 60, f"the first beat to schedule:\n{first.tail()}")
        second.start()
        time.sleep(3 * LEASE_SECONDS)  # long enough for the second to take the lease if it could
        both_alive = _sent_by(broker)
        print(f"\nboth alive {3 * LEASE_SECONDS} s: sent {dict(both_alive)} (first {first.pid}, second {second.pid})")
        assert both_alive[second.pid] == 0, f"the second beat scheduled while the first lived:\n{second.tail()}"
        assert both_alive[first.pid] >= 5 + 2 * LEASE_SECONDS, "the first beat stopped scheduling"

        first.kill()  # SIGKILL: no release, the lease must expire
        killed_at = time.monotonic()
        sent_by_first = _sent_by(broker)[first.pid]
        wait_for(lambda: _sent_by(broker)[second.pid] > 0, 30, f"the second beat to take over:\n{second.tail()}")
        take_over = time.monotonic() - killed_at
        print(f"take-over after SIGKILL of the holder: {take_over:.2f} s (lease {LEASE_SECONDS} s)")
        assert take_over <= 2 * LEASE_SECONDS, f"the take-over took {take_over:.1f} s"
        assert _sent_by(broker)[first.pid] == sent_by_first

        third.start()
        second.stop()  # SIGTERM: it gives the lease up as it stops
        stopped_at = time.monotonic()
        wait_for(lambda: _sent_by(broker)[third.pid] > 0, 30, f"the third beat to take over:\n{third.tail()}")
        hand_over = time.monotonic() - stopped_at
        print(f"hand-over after SIGTERM of the holder: {hand_over:.2f} s")
        assert "scheduler lease released" in second.output()
        assert hand_over < LEASE_SECONDS, f"a clean stop left the lease to expire ({hand_over:.1f} s)"
        senders = _sent_by(broker)
        assert set(senders) <= {first.pid, second.pid, third.pid}
    finally:
        for beat in (first, second, third):
            beat.stop()
        broker.flushdb()
