"""Child processes with a log file: started in a session of their own, dying with us, stopped in order.

Everything the dev tooling starts (embedded servers, gunicorn, Celery workers, beat, Flower)
is a `Child`: its output goes to a log file whose last lines explain a failure. Children
get ``PR_SET_PDEATHSIG`` on Linux when started from the main thread, so a crashed (even
SIGKILLed) parent leaves nothing behind; the signal is tied to the *thread* that started
the child, which is why it is not set from other threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child exited or did not get ready; the message carries the last lines of its log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when we die (Linux, main thread only).

    Runs after Popen switched user/group, which matters: changing credentials clears
    the parent-death signal."""
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


def log_tail(log_path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def mark_log(log_path: Path, header: str) -> int:
    """Append a dated header line to the log; returns the offset where this run's output starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        offset = f.tell()
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} sampledb-jobs: {header} ===\n".encode())
    return offset


class Child:
    """One child process in a session of its own (stopping it stops its children too), logging to a file."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        *,
        stop_signal: int = signal.SIGTERM,
        stop_steps: tuple[tuple[int, float], ...] = (),
        death_signal: int | None = None,
    ):
        self.name = name
        self.log_path = Path(log_path)
        self.stop_signal = stop_signal  # the clean stop (SIGINT = "fast" shutdown for postgres)
        self.death_signal = death_signal or stop_signal  # what the kernel sends it when we die unannounced
        self.stop_steps = stop_steps  # (signal, seconds) tried after it, before SIGKILL
        self.process: subprocess.Popen | None = None
        self.log_offset = 0
        self._lock = threading.Lock()

    def start(self, argv: list[str], **popen_kwargs) -> Child:
        self.log_offset = mark_log(self.log_path, f"starting {self.name}")
        with open(self.log_path, "ab") as logf:
            try:
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C of a terminal goes to us; we stop children in order
                    preexec_fn=die_with_parent(self.death_signal),
                    **popen_kwargs,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ChildError(f"could not run {self.name} ({argv[0]}): {exc}") from exc
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this run wrote to the log."""
        return log_tail(self.log_path, self.log_offset, lines)

    def output(self) -> str:
        """All this run wrote to the log."""
        return log_tail(self.log_path, self.log_offset, lines=10**9)

    def wait_until(self, ready: Callable[[float], object], timeout: float, what: str = "ready") -> None:
        """Call ``ready(seconds_left)`` until it returns truthy without raising; ChildError (with the log
        tail) if the child exits first or `timeout` passes."""
        started = time.monotonic()
        deadline = started + timeout
        last_error: BaseException | None = None
        while True:
            if self.exited() is not None:
                assert self.process is not None  # it exited, so it was started
                raise ChildError(
                    f"{self.name} exited with code {self.process.returncode} before it was {what}. "
                    f"Last lines of {self.log_path}:\n{self.tail()}"
                )
            try:
                if ready(max(0.5, deadline - time.monotonic())):
                    log.info("%s %s in %.2fs (pid %s)", self.name, what, time.monotonic() - started, self.pid)
                    return
            except Exception as exc:  # not ready yet
                last_error = exc
            if time.monotonic() >= deadline:
                raise ChildError(
                    f"{self.name} was not {what} within {timeout:.0f}s (last error: {last_error!r}). "
                    f"Last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None  # alive, so started
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the child and its session at once: no clean shutdown."""
        if self.process is not None:
            _killpg(self.process.pid)
            self.process.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """The clean stop signal, then `stop_steps`, then SIGKILL of whatever is left of the child's session
        (pool processes, gunicorn workers). Idempotent."""
        with self._lock:
            proc = self.process
            if proc is None:
                return
            descendants = _descendants(proc.pid)
            steps = ((self.stop_signal, timeout), *self.stop_steps)
            for sig, wait in steps:
                if proc.poll() is not None:
                    break
                self.signal(sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %s) did not stop on signal %s within %ss", self.name, proc.pid, sig, wait)
            _killpg(proc.pid)
            proc.wait(10)
            reap(descendants)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # psutil missing or process gone
        return []


def wait_gone(proc, timeout: float) -> bool:
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


def reap(procs: list, timeout: float = 5) -> None:
    """Wait for these processes (psutil.Process) to exit, killing those that do not."""
    if not procs:
        return
    import psutil

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not wait_gone(p, max(0.0, deadline - time.monotonic()))]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    for p in alive:
        wait_gone(p, timeout)


def terminate_foreign(proc, steps) -> None:
    """Stop a process that is not our child (psutil.Process), escalating through
    ``steps`` of (signal, seconds to wait); its own children are waited for too."""
    import psutil

    children = _descendants(proc.pid)
    for sig, wait in steps:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            break
        if wait_gone(proc, wait):
            break
    reap(children)
