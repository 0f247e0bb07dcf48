"""A relay woken while another one is mid-batch (app.outbox.trigger): it leaves the rows that woke it to the
holder, which runs one more batch before it ends. No Celery retry: each one built an exception record copying
every frame's code positions, a few a second under a steady Celery intake, and kept a pool process growing."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from app.dev.kafka import read_topic
from app.extensions import db
from app.models import OutboxMessage
from app.outbox.store import add_message
from app.outbox.trigger import RELAY_PENDING_KEY
from app.unit_of_work import unit_of_work
from workers import relay, tasks

pytestmark = pytest.mark.committing  # the relay commits its batches, as in a worker


def _write_row(app, topic: str, key: str) -> None:
    with app.app_context(), unit_of_work(db.session) as session:
        add_message(session, topic, key, {"jobID": key})


def test_a_relay_that_finds_the_lock_busy_leaves_its_rows_to_the_holder_and_is_not_retried(
    live_app, worker_settings, kafka_broker, redis_client, monkeypatch
):
    """Fault: a row is committed (and wakes a relay) while another relay holds the lock, after that one read the
    outbox. Before the fix the woken relay retried every 50 ms as a Celery retry (here, called directly, its
    Retry escapes) and the holder ended without the row."""
    topic = f"Sample.Analysis.Job.Handoff{uuid.uuid4().hex[:8]}"
    first, second = f"job-{uuid.uuid4()}", f"job-{uuid.uuid4()}"
    _write_row(live_app, topic, first)

    in_batch, go_on = threading.Event(), threading.Event()
    send = relay._send

    def held_send(settings, rows, send_timeout):
        if not in_batch.is_set():  # the holder's first batch: it has read the outbox, and holds the lock
            in_batch.set()
            assert go_on.wait(60)
        return send(settings, rows, send_timeout)

    monkeypatch.setattr(relay, "_send", held_send)
    holder: dict = {}

    def run_holder() -> None:
        with live_app.app_context():
            holder.update(tasks.relay_outbox.run(triggered=True))

    thread = threading.Thread(target=run_holder)
    thread.start()
    try:
        assert in_batch.wait(60), "the holder never reached its first send"
        _write_row(live_app, topic, second)  # committed after the holder read the outbox
        with live_app.app_context():
            woken = tasks.relay_outbox.run(triggered=True)  # the relay that commit woke
        assert woken["busy"] is True and woken["sent"] == 0, woken
        # It woke for the second row's commit; the holder reads after it gave up, so a later commit must wake a
        # relay anew, not find the wake-up flag still up (it would wait for the flag to expire, or for beat).
        assert not redis_client.exists(RELAY_PENDING_KEY)
    finally:
        go_on.set()
        thread.join(60)

    assert holder["sent"] == 2, holder  # one more batch before it ended: the woken relay's row too
    with live_app.app_context():
        unsent = db.session.scalar(
            sa.select(sa.func.count()).where(OutboxMessage.topic == topic, OutboxMessage.sent_timestamp.is_(None))
        )
    assert unsent == 0
    on_kafka = [record.key.decode() for record in read_topic(kafka_broker.url, topic, timeout=20, expect=2)]
    assert sorted(on_kafka) == sorted([first, second])
