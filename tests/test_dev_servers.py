"""Real servers from Python packages (app.dev): PostgreSQL, Redis, Tansu (Kafka)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from app.dev.kafka import read_topic, start_kafka
from app.dev.postgres import start_postgres
from app.dev.redis import start_redis
from app.dev.servers import Server

pytestmark = pytest.mark.servers  # starts servers of its own

ROOT = Path(__file__).resolve().parents[1]


def _pg_conninfo(server: Server) -> str:
    return server.url.replace("postgresql+psycopg://", "postgresql://", 1)


def _tree(server: Server) -> list[psutil.Process]:
    proc = psutil.Process(server.process.pid)
    return [proc, *proc.children(recursive=True)]


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_stopped(server: Server, tree: list[psutil.Process]) -> None:
    assert not server.alive()
    assert server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(server.process.pid, 0)  # reaped, not a zombie
    leftovers = [p for p in tree if not _gone(p)]
    assert not leftovers, f"{server.name} left processes behind: {leftovers}"


@pytest.fixture(scope="module")
def stack():
    data_dir = _private_dir()
    servers: dict[str, Server] = {}
    timings: dict[str, float] = {}
    try:
        for name, start in (
            ("postgresql", lambda: start_postgres(data_dir)),
            ("redis", lambda: start_redis(data_dir)),
            ("kafka", lambda: start_kafka(log_dir=data_dir)),
        ):
            t0 = time.monotonic()
            servers[name] = start()
            timings[name] = time.monotonic() - t0
        print("cold start seconds:", {k: round(v, 2) for k, v in timings.items()})
        yield data_dir, servers
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _private_dir() -> Path:
    # Not pytest's tmp_path when root: PostgreSQL runs as another user and needs every
    # parent directory traversable all the time, and each pytest session of root resets
    # /tmp/pytest-of-root to 0700 (which PANICs a running postgres of a concurrent session).
    return Path(tempfile.mkdtemp(prefix="sampledb-dev-servers-test-"))


@pytest.fixture
def pg_dir():
    path = _private_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_urls_are_tcp_on_loopback(stack):
    _, s = stack
    assert s["postgresql"].url == f"postgresql+psycopg://postgres@127.0.0.1:{s['postgresql'].port}/sampledb"
    assert s["redis"].url == f"redis://127.0.0.1:{s['redis'].port}/0"
    assert s["kafka"].url == f"127.0.0.1:{s['kafka'].port}"
    for server in s.values():
        assert server.alive()
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass


def test_postgres_row_survives_restart(stack):
    import psycopg

    data_dir, s = stack
    pg = s["postgresql"]
    with psycopg.connect(_pg_conninfo(pg)) as conn:
        assert conn.info.host == "127.0.0.1"
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("sampledb", "postgres")
        conn.execute("CREATE TABLE survivor (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO survivor VALUES (1, 'écrit avant l''arrêt')")

    tree = _tree(pg)
    pg.stop()
    _assert_stopped(pg, tree)
    pg.stop()  # idempotent

    t0 = time.monotonic()
    s["postgresql"] = pg2 = start_postgres(data_dir)
    print(f"postgres warm start: {time.monotonic() - t0:.2f}s")
    with psycopg.connect(_pg_conninfo(pg2)) as conn:
        assert conn.execute("SELECT note FROM survivor WHERE id = 1").fetchone() == ("écrit avant l'arrêt",)
        assert conn.execute("SELECT upper('é')").fetchone() == ("É",)  # builtin C.UTF-8 provider


def test_redis_set_get_and_aof_survives_restart(stack):
    import redis

    data_dir, s = stack
    client = redis.Redis.from_url(s["redis"].url)
    client.set("greeting", "hello")
    client.rpush("celery", "task-1", "task-2")
    assert client.get("greeting") == b"hello"
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()

    tree = _tree(s["redis"])
    s["redis"].stop()
    _assert_stopped(s["redis"], tree)
    s["redis"] = start_redis(data_dir)
    client = redis.Redis.from_url(s["redis"].url)
    assert client.lrange("celery", 0, -1) == [b"task-1", b"task-2"]
    client.close()


def test_kafka_idempotent_produce_and_read_back(stack):
    from kafka import KafkaProducer

    bootstrap = stack[1]["kafka"].url
    topic = f"dev-servers-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    try:
        futures = [producer.send(topic, key=f"k{i}".encode(), value=f"m{i}".encode()) for i in range(10)]
        producer.flush(10)
        metadata = [f.get(timeout=10) for f in futures]
        partitions = producer.partitions_for(topic)
    finally:
        producer.close(timeout=5)
    assert partitions  # auto-created on first produce (Tansu: 4 partitions)
    assert {m.partition for m in metadata} <= partitions

    records = read_topic(bootstrap, topic, timeout=10, expect=10)
    assert sorted(r.value for r in records) == sorted(f"m{i}".encode() for i in range(10))
    assert {(r.partition, r.offset) for r in records} == {(m.partition, m.offset) for m in metadata}

    # expect=None: stops when every partition is read to its high watermark.
    t0 = time.monotonic()
    assert len(read_topic(bootstrap, topic, timeout=10)) == 10
    assert time.monotonic() - t0 < 5
    assert read_topic(bootstrap, f"missing-{uuid.uuid4().hex[:8]}", timeout=1) == []


def test_start_failure_raises_with_log_tail(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as err:
            start_redis(tmp_path, port=port)
    message = str(err.value)
    assert "redis exited" in message and str(tmp_path / "redis.log") in message
    assert "Address already in use" in message


def test_postmaster_left_by_crashed_run_is_stopped(pg_dir):
    """A postgres started from a non-main thread (no parent-death signal) of a process
    that dies without cleanup keeps running; the next start must stop it first."""
    script = textwrap.dedent(
        f"""
        import os, sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from app.dev.postgres import start_postgres
        box = {{}}
        t = threading.Thread(target=lambda: box.update(pg=start_postgres(Path({str(pg_dir)!r}))))
        t.start(); t.join()
        print(box["pg"].process.pid, flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    old = psutil.Process(int(out.stdout.split()[-1]))
    try:
        assert not _gone(old)
        pg = start_postgres(pg_dir)
        try:
            assert _gone(old)
            import psycopg

            with psycopg.connect(_pg_conninfo(pg)) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            pg.stop()
    finally:
        if not _gone(old):  # the test failed: do not leave the orphan behind
            for p in [*old.children(recursive=True), old]:
                p.kill()


def test_stop_leaves_no_process(stack):
    _, s = stack
    for name in ("kafka", "redis", "postgresql"):
        server = s[name]
        assert server.alive()
        tree = _tree(server)
        server.stop()
        _assert_stopped(server, tree)
        server.stop()  # idempotent
