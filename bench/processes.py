"""Child processes of a benchmark (gunicorn, a Celery worker) and the peak RSS of their processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from app.localstack import _die_with_parent, free_port

GUNICORN_OPTIONS = ["-c", "python:app.gunicorn_settings"]  # as the Procfile runs the API
REPO = Path(__file__).resolve().parent.parent  # wsgi.py, celeryconfig.py and bench/ are imported from here


class Child:
    """A process in a session of its own (so stopping it stops its children too), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # start_new_session: stopping the group stops its children too; the death signal: a crashed
            # benchmark leaves no worker behind that would take the next run's tasks.
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent(signal.SIGTERM))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of its group is left (pool processes)
        except ProcessLookupError:
            pass
        self.process.wait()


def start_gunicorn(target: str, env: dict[str, str], log_path: Path, ready_path: str) -> tuple[Child, str]:
    """gunicorn serving `target` as the Procfile does, on a free port; returns it once `ready_path` answers 200."""
    port = free_port()
    child = Child(f"gunicorn {target}", [sys.executable, "-m", "gunicorn", *GUNICORN_OPTIONS,
                                         "--bind", f"127.0.0.1:{port}", target], env, log_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited at start:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(base + ready_path, timeout=2) as response:
                if response.status == 200:
                    return child, base
        except OSError:
            pass
        time.sleep(0.2)
    child.stop()
    raise RuntimeError(f"{child.name} did not answer {ready_path} within 60 s:\n{child.log_tail()}")


class PeakRss(threading.Thread):
    """Samples the RSS of the descendants of `root_pid` (and of the root itself if `include_root`) every
    `interval` seconds; `peaks` holds the highest RSS in bytes seen for each process."""

    def __init__(self, root_pid: int, interval: float = 0.2, include_root: bool = False):
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.include_root = include_root
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self) -> None:
        try:
            processes = self.root.children(recursive=True) + ([self.root] if self.include_root else [])
        except psutil.Error:
            return
        for proc in processes:
            try:
                rss = proc.memory_info().rss
                self.names.setdefault(proc.pid, " ".join(proc.cmdline()[:6]))
            except psutil.Error:
                continue
            self.peaks[proc.pid] = max(rss, self.peaks.get(proc.pid, 0))

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        self.sample()
        per_process = {str(pid): {"peak_rss_mb": round(rss / 2**20, 1), "cmd": self.names.get(pid, "")}
                       for pid, rss in sorted(self.peaks.items())}
        return {"peak_rss_mb": round(max(self.peaks.values(), default=0) / 2**20, 1), "processes": per_process}
