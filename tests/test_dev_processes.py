"""app.dev.processes.Child: what every dev tool, the benchmarks and the tests start their children with."""

from __future__ import annotations

import signal
import sys

import psutil
import pytest

from app.dev.processes import Child, ChildError

# A parent that ignores the clean stop signal and leaves a child of its own behind.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); print('started', flush=True); "
    "time.sleep(300)",
]


def test_stop_escalates_and_leaves_nothing_of_the_session(tmp_path):
    child = Child("stubborn", tmp_path / "stubborn.log").start(STUBBORN)
    child.wait_until(lambda left: "started" in child.output(), 30, "started")
    tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    assert len(tree) == 2
    child.stop(timeout=0.5)
    assert not child.alive() and child.process.returncode == -signal.SIGKILL
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    child.stop()  # idempotent


def test_a_child_that_exits_is_reported_with_the_last_lines_of_its_log(tmp_path):
    log_path = tmp_path / "failing.log"
    log_path.write_text("an earlier run's line\n")
    child = Child("failing", log_path).start([sys.executable, "-c", "print('bad setting: X'); raise SystemExit(3)"])
    with pytest.raises(ChildError) as err:
        child.wait_until(lambda left: False, 30, "ready")
    message = str(err.value)
    assert "failing exited with code 3" in message and "bad setting: X" in message and str(log_path) in message
    assert "an earlier run's line" not in child.tail()  # only this run's output
