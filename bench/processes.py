"""Child processes of a benchmark (gunicorn, a Celery worker) and the peak RSS of their processes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil

from app.dev import commands
from app.dev.processes import Child, ChildError, free_port

REPO = Path(__file__).resolve().parent.parent  # wsgi.py, celeryconfig.py and bench/ are imported from here


def start_child(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    """A child of the benchmark run from the repository; its death signal: a crashed benchmark leaves no
    worker behind that would take the next run's tasks."""
    return Child(name, log_path).start(argv, env=env, cwd=REPO)


def start_gunicorn(target: str, env: dict[str, str], log_path: Path, ready_path: str) -> tuple[Child, str]:
    """gunicorn serving `target` as the Procfile does, on a free port; returns it once `ready_path` answers 200."""
    base = f"http://127.0.0.1:{free_port()}"
    child = start_child(f"gunicorn {target}", commands.gunicorn(target, base.removeprefix("http://")), env, log_path)
    try:
        child.wait_until(lambda left: commands.answers(base + ready_path), 60, f"answering {ready_path}")
    except ChildError:
        child.stop()
        raise
    return child, base


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
                # The program by its name alone: the results say which process, not where it is installed.
                argv = proc.cmdline()[:6]
                self.names.setdefault(proc.pid, " ".join([os.path.basename(argv[0]), *argv[1:]] if argv else []))
            except psutil.Error:
                continue
            self.peaks[proc.pid] = max(rss, self.peaks.get(proc.pid, 0))

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        self.sample()
        per_process = {
            str(pid): {"peak_rss_mb": round(rss / 2**20, 1), "cmd": self.names.get(pid, "")}
            for pid, rss in sorted(self.peaks.items())
        }
        return {"peak_rss_mb": round(max(self.peaks.values(), default=0) / 2**20, 1), "processes": per_process}
