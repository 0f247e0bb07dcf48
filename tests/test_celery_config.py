"""Celery configuration: queues, routes, beat and task names agree with each other and with the Procfile."""

from __future__ import annotations

import re
from pathlib import Path

import celeryconfig
from app.operations.sweep_runs import periodic_intervals
from celeryconfig import QueueNames, TaskNames
from workers.celery_app import celery
from workers.relay import BACKOFF_CAP_MS, backoff_ms

ROOT = Path(__file__).resolve().parents[1]

STABLE_TASK_NAMES = {
    "sampledb.ingest_submission",
    "sampledb.ingest_submissions",
    "sampledb.ingest_pending",
    "sampledb.relay_outbox",
    "sampledb.sweep_execution_timeouts",
    "sampledb.purge",
    "sampledb.sweep_enqueued_timeouts",
    "sampledb.sweep_unconfirmed_aborts",
}


def _declared_queues() -> set[str]:
    return {queue.name for queue in celeryconfig.task_queues}


def _procfile_worker_queues() -> set[str]:
    procfile = (ROOT / "Procfile").read_text()
    command = re.search(r"^worker:(.*)$", procfile, re.MULTILINE).group(1)
    return set(re.search(r"-Q\s+(\S+)", command).group(1).split(","))


def test_task_names_are_stable_strings():
    celery.loader.import_default_modules()
    registered = {name for name in celery.tasks if name.startswith("sampledb.")}
    assert registered == STABLE_TASK_NAMES
    assert {v for k, v in vars(TaskNames).items() if k.isupper()} == STABLE_TASK_NAMES
    assert TaskNames.INGEST_SUBMISSION == "sampledb.ingest_submission"  # the sample service's contract


def test_every_task_routes_to_a_declared_queue():
    assert set(celeryconfig.task_routes) == STABLE_TASK_NAMES
    for task, route in celeryconfig.task_routes.items():
        assert route["queue"] in _declared_queues(), task
    assert celeryconfig.task_routes[TaskNames.INGEST_SUBMISSION]["queue"] == QueueNames.INGEST
    assert celeryconfig.task_routes[TaskNames.RELAY_OUTBOX]["queue"] == QueueNames.OUTBOX
    for sweep in (
        TaskNames.SWEEP_EXECUTION_TIMEOUTS,
        TaskNames.SWEEP_ENQUEUED_TIMEOUTS,
        TaskNames.SWEEP_UNCONFIRMED_ABORTS,
        TaskNames.PURGE,
    ):
        assert celeryconfig.task_routes[sweep]["queue"] == QueueNames.PERIODIC


def test_every_declared_queue_is_consumed_by_the_worker():
    assert _declared_queues() == set(QueueNames.all()) == {"ingest", "outbox", "periodic"}
    assert _procfile_worker_queues() == _declared_queues()
    assert celeryconfig.task_default_queue in _declared_queues()
    assert celeryconfig.task_create_missing_queues is False


def test_beat_entries_name_their_queue_and_a_known_task():
    schedule = celeryconfig.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {
        TaskNames.RELAY_OUTBOX,
        TaskNames.SWEEP_EXECUTION_TIMEOUTS,
        TaskNames.SWEEP_ENQUEUED_TIMEOUTS,
        TaskNames.SWEEP_UNCONFIRMED_ABORTS,
        TaskNames.PURGE,
        TaskNames.INGEST_PENDING,
    }
    for name, entry in schedule.items():
        queue = entry["options"]["queue"]
        assert queue in _declared_queues(), name
        assert queue == celeryconfig.task_routes[entry["task"]]["queue"], name
        assert entry["options"]["expires"] <= entry["schedule"], name


def test_beat_intervals_come_from_settings():
    settings = celeryconfig._settings
    schedule = celeryconfig.beat_schedule
    assert schedule["relay-outbox"]["schedule"] == settings.outbox_relay_interval_seconds
    assert schedule["ingest-pending"]["schedule"] == settings.pending_ingest_interval_seconds
    for name in ("sweep-execution-timeouts", "sweep-enqueued-timeouts", "sweep-unconfirmed-aborts"):
        assert schedule[name]["schedule"] == settings.sweep_interval_seconds
    assert schedule["purge"]["schedule"] == settings.purge_interval_seconds
    # status watches every periodic task beat schedules, at the interval beat uses
    assert {
        e["task"]: e["schedule"] for e in schedule.values() if e["task"] != TaskNames.RELAY_OUTBOX
    } == periodic_intervals(settings)


def test_reliability_settings():
    conf = celery.conf
    assert conf.broker_url == celeryconfig._settings.celery_broker
    assert conf.task_serializer == "json" and conf.accept_content == ["json"] and conf.result_serializer == "json"
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    # A task killed at its hard time limit (a hung database) is re-queued, not acknowledged and gone.
    assert conf.task_acks_on_timeout is False
    # Prefetch 1 on Redis (the batching strategy raises it as a batch fills); on RabbitMQ's quorum queues a
    # consumer keeps the prefetch it started with, so it starts with room for one ingest batch.
    amqp = celeryconfig._settings.broker_is_amqp
    assert conf.worker_prefetch_multiplier == (celeryconfig.INGEST_BATCH_SIZE if amqp else 1)
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_ignore_result is True
    if not celeryconfig._settings.broker_is_amqp:
        # Redis re-delivers unacknowledged messages after the visibility timeout: it must outlast
        # the longest retry countdown (60 s) and task (hard limit).
        visibility = conf.broker_transport_options["visibility_timeout"]
        assert visibility > 60 and visibility > conf.task_time_limit


def _celeryconfig_under(**environment: str) -> dict:
    """What celeryconfig sets up in a fresh interpreter whose environment holds `environment`."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    probe = (
        "import json, celeryconfig as c; print(json.dumps({'broker_url': c.broker_url, "
        "'transport': c.broker_transport_options, 'queues': [{'name': q.name, 'exchange': q.exchange.type, "
        "'arguments': q.queue_arguments or {}, 'durable': q.durable} for q in c.task_queues], "
        "'prefetch': c.worker_prefetch_multiplier}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEDB_")}
    env.update(environment, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # Elsewhere than a checkout, where no dev stack's .sampledb/dev.env fills in the unset URLs.
    with tempfile.TemporaryDirectory() as elsewhere:
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, cwd=elsewhere, capture_output=True, text=True, check=True
        ).stdout
    return json.loads(out.splitlines()[-1])


def test_a_rabbitmq_broker_gets_durable_quorum_queues_on_topic_exchanges_and_publisher_confirms():
    conf = _celeryconfig_under(
        SAMPLEDB_REDIS_URL="redis://127.0.0.1:6379/3", SAMPLEDB_CELERY_BROKER_URL="amqp://guest:guest@mq:5672/sdb"
    )
    assert conf["broker_url"] == "amqp://guest:guest@mq:5672/sdb"
    assert conf["transport"] == {"confirm_publish": True}
    # A quorum queue's consumer keeps the prefetch it started with: room for a whole ingest batch from the start.
    assert conf["prefetch"] == celeryconfig.INGEST_BATCH_SIZE
    assert {q["name"] for q in conf["queues"]} == set(QueueNames.all())
    for queue in conf["queues"]:
        assert queue["arguments"] == {"x-queue-type": "quorum"} and queue["durable"]
        assert queue["exchange"] == "topic"  # Celery's native delayed delivery routes countdowns by topic


def test_without_a_broker_url_celery_uses_the_redis_and_a_sentinel_url_names_its_master():
    conf = _celeryconfig_under(SAMPLEDB_REDIS_URL="redis://127.0.0.1:6379/3")
    assert conf["broker_url"] == "redis://127.0.0.1:6379/3"
    assert {q["exchange"] for q in conf["queues"]} == {"direct"} and all(not q["arguments"] for q in conf["queues"])
    assert conf["prefetch"] == 1
    sentinel = _celeryconfig_under(
        SAMPLEDB_REDIS_URL="sentinel://s1:26379;sentinel://s2:26379/2", SAMPLEDB_REDIS_SENTINEL_MASTER="sampledb"
    )
    assert sentinel["broker_url"] == "sentinel://s1:26379;sentinel://s2:26379/2"
    assert sentinel["transport"]["master_name"] == "sampledb"


def test_relay_backoff_doubles_up_to_a_cap():
    delays = [backoff_ms(n) for n in range(1, 12)]
    assert delays[:4] == [500, 1000, 2000, 4000]
    assert delays == sorted(delays) and max(delays) == BACKOFF_CAP_MS == 30_000


def test_ingest_retries_transient_errors_with_backoff_and_never_retries_bad_payloads():
    import sqlalchemy.exc as sa_exc

    from app.intake.validation import InvalidSubmission
    from workers import tasks

    for task in (tasks.ingest_submission, tasks.ingest_submissions):
        assert task.name in STABLE_TASK_NAMES
        assert sa_exc.OperationalError in task.autoretry_for and sa_exc.InterfaceError in task.autoretry_for
        assert task.max_retries is None  # a database outage never drops a submission
        assert task.retry_backoff and task.retry_backoff_max == 60 and task.retry_jitter
        # An invalid payload is stored dead inside the task, never retried.
        assert not any(issubclass(InvalidSubmission, error) for error in task.autoretry_for)
    assert celeryconfig.task_time_limit < celeryconfig.VISIBILITY_TIMEOUT_SECONDS


def test_a_sender_configures_for_the_broker_it_sends_to_not_for_its_own_environment():
    """The web app and beat send with app.dispatch: a RabbitMQ URL gets quorum queues and confirms even in a
    process whose environment names Redis, and a countdown below RabbitMQ's one second becomes one second."""
    from app.dispatch import celery_client, countdown_for

    rabbit = celery_client("amqp://guest:guest@mq.invalid:5672/sampledb")
    assert rabbit.conf.broker_transport_options == {"confirm_publish": True}
    assert {q.queue_arguments["x-queue-type"] for q in rabbit.conf.task_queues} == {"quorum"}
    redis_client = celery_client("redis://127.0.0.1:6379/9")
    assert "visibility_timeout" in redis_client.conf.broker_transport_options
    assert countdown_for("amqp://mq/sampledb", 0.05) == 1.0 and countdown_for("amqp://mq/sampledb", 2.2) == 3.0
    assert countdown_for("redis://127.0.0.1:6379/9", 0.05) == 0.05


def test_a_worker_cut_off_while_it_restores_abandoned_messages_holds_the_others_up_for_30_s_not_5_min(redis_url):
    """Fault: a worker host cut off from Redis in the middle of its pass that puts abandoned messages back keeps
    kombu's restore lock. Another worker restores a message taken and never acknowledged once that lock expires:
    within UNACKED_RESTORE_LOCK_SECONDS here, where kombu's default held every redelivery up for 300 s."""
    import time
    import uuid

    import kombu

    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    options = {
        **celeryconfig.broker_options(redis_url)["broker_transport_options"],
        "visibility_timeout": 1,
        "unacked_key": prefix + "unacked",
        "unacked_index_key": prefix + "unacked_index",
        "unacked_mutex_key": prefix + "unacked_mutex",
    }
    queue = prefix + "ingest"
    with (
        kombu.Connection(redis_url, transport_options=options) as cut_off,
        kombu.Connection(redis_url, transport_options=options) as other,
    ):
        taken = cut_off.default_channel
        kombu.Queue(queue, routing_key=queue)(taken).declare()
        kombu.Producer(taken).publish({"n": 1}, routing_key=queue)
        assert taken.basic_get(queue, no_ack=False) is not None  # taken, never acknowledged
        # Cut off mid-restore: the lock it took is never released.
        assert taken.client.lock(options["unacked_mutex_key"], timeout=taken.unacked_mutex_expire).acquire(
            blocking=False
        )
        channel, started = other.default_channel, time.monotonic()
        while channel.client.llen(queue) == 0 and time.monotonic() - started < 60:
            channel.qos.restore_visible(num=None, interval=1)
            time.sleep(0.5)
        waited = time.monotonic() - started
        try:
            assert channel.client.llen(queue) == 1, "the abandoned message never went back to its queue"
            assert waited <= celeryconfig.UNACKED_RESTORE_LOCK_SECONDS + 5, waited
        finally:
            channel.client.delete(queue, *(options[k] for k in ("unacked_key", "unacked_index_key")))
