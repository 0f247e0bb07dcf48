"""An embedded server: a `Child` listening on a port of 127.0.0.1, started until a probe answers.

Every server started by this process is registered, so that a normal exit stops them
(atexit) even if the caller dropped its Server, and so that a second start on the same
data directory can find the first one.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from app.dev.processes import HOST, Child, ChildError, free_port

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0  # seconds a server gets to accept connections
_PORT_IN_USE_MARKERS = ("address already in use", "could not bind", "addrinuse", "os error 98")


class Server(Child):
    def __init__(
        self,
        name: str,
        log_path: Path,
        *,
        port: int,
        url: str,
        data_dir: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_steps: tuple[tuple[int, float], ...] = (),
    ):
        super().__init__(name, log_path, stop_signal=stop_signal, stop_steps=stop_steps)
        self.port = port
        self.url = (
            url  # postgresql+psycopg://postgres@127.0.0.1:PORT/sampledb ; redis://127.0.0.1:PORT/0 ; 127.0.0.1:PORT
        )
        self.data_dir = data_dir
        self.cleanup_dir: Path | None = None  # removed by stop() (kafka's own temp dir)

    def __repr__(self) -> str:
        return f"Server({self.name!r}, url={self.url!r}, pid={self.pid})"

    def stop(self, timeout: float = 15) -> None:
        super().stop(timeout)
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)
            self.cleanup_dir = None


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


def running(name: str) -> list[Server]:
    """The servers of that name this process started that are still running."""
    with _registry_lock:
        return [s for s in _registry if s.alive() and s.name == name]


def _stop_all() -> None:
    with _registry_lock:
        servers = list(reversed(_registry))
        _registry.clear()
    for server in servers:
        try:
            server.stop()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("could not stop %s", server.name)


def run_server(
    name: str,
    argv_for: Callable[[int], list[str]],
    port: int | None,
    log_path: Path,
    probe: Callable[[int, float], None],
    url_for: Callable[[int], str],
    *,
    stop_signal: int = signal.SIGTERM,
    stop_steps: tuple[tuple[int, float], ...] = (),
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
        server = Server(
            name, log_path, port=p, url=url_for(p), data_dir=data_dir, stop_signal=stop_signal, stop_steps=stop_steps
        )
        server.start(argv_for(p), **(popen_kwargs or {}))
        _register(server)

        def ready(left: float) -> bool:
            probe(p, left)
            return True

        try:
            server.wait_until(ready, STARTUP_TIMEOUT, f"accepting connections on {HOST}:{p}")
        except ChildError:
            exited = server.exited() is not None
            server.stop()
            tail = server.tail().lower()
            port_taken = port is None and any(m in tail for m in _PORT_IN_USE_MARKERS)
            if exited and attempt + 1 < attempts and (port_taken or any(m in tail for m in retry_markers)):
                log.warning("%s exited at start (%s), trying again", name, "port taken" if port_taken else "see log")
                continue
            raise
        return server
    raise AssertionError("unreachable")
