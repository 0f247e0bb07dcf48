"""Heap snapshots of a worker's pool processes, for finding what grows (README, "Memory of a long run").

With SAMPLEDB_HEAP_SNAPSHOT_DIR set, each pool process (workers.celery_app, at its start) traces its
allocations (tracemalloc, 25 frames: it costs CPU and memory, so only for a diagnosis) and writes a snapshot
to that directory, `<pid>-<n>.snapshot`, each time it gets SIGUSR2. Two snapshots of one process, diffed
(`tracemalloc.Snapshot.load`, `compare_to`), name the lines whose allocations grew between them.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import tracemalloc
from pathlib import Path

SNAPSHOT_DIR_ENV = "SAMPLEDB_HEAP_SNAPSHOT_DIR"


def trace_if_asked() -> None:
    directory = os.environ.get(SNAPSHOT_DIR_ENV)
    if not directory:
        return
    tracemalloc.start(25)
    numbers = itertools.count(1)

    def dump(_signum, _frame) -> None:
        target = Path(directory) / f"{os.getpid()}-{next(numbers)}.snapshot"
        gc.collect()  # what is kept, not garbage awaiting a collection
        tracemalloc.take_snapshot().dump(str(target))

    signal.signal(signal.SIGUSR2, dump)
