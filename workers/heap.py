"""A pool process's heap: the free memory given back to the system, and snapshots for finding what grows
(README, "Memory of a long run").

`give_back_free_memory()` runs after each task and batch, at most once a second: glibc's malloc keeps the pages
of freed memory (in the middle of its heaps and in the arenas of other threads, such as kafka-python's network
thread) until malloc_trim() returns them, so a process whose live memory stays flat still grows in RSS as
allocations of different sizes come and go.

With SAMPLEDB_HEAP_SNAPSHOT_DIR set, each pool process (workers.celery_app, at its start) traces its
allocations (tracemalloc, 25 frames: it costs CPU and memory, so only for a diagnosis) and writes a snapshot
to that directory, `<pid>-<n>.snapshot`, each time it gets SIGUSR2. Two snapshots of one process, diffed
(`tracemalloc.Snapshot.load`, `compare_to`), name the lines whose allocations grew between them.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import itertools
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

SNAPSHOT_DIR_ENV = "SAMPLEDB_HEAP_SNAPSHOT_DIR"
TRACE_FRAMES_ENV = "SAMPLEDB_HEAP_TRACE_FRAMES"  # 0: no tracemalloc, only the allocator's figures and the census
TRIM_INTERVAL_SECONDS = 1.0

_malloc_trim = None
_next_trim = 0.0


def _find_malloc_trim():
    """glibc's malloc_trim, or a no-op where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda _pad: 0


def give_back_free_memory() -> None:
    """malloc_trim(0) unless it ran less than TRIM_INTERVAL_SECONDS ago (it walks the heap: 0.2-0.3 ms when
    little was freed since the last one, 30 ms right after 250 MB were)."""
    global _malloc_trim, _next_trim
    now = time.monotonic()
    if now < _next_trim:
        return
    if _malloc_trim is None:
        _malloc_trim = _find_malloc_trim()
    _malloc_trim(0)
    _next_trim = time.monotonic() + TRIM_INTERVAL_SECONDS


def trace_if_asked() -> None:
    directory = os.environ.get(SNAPSHOT_DIR_ENV)
    if not directory:
        return
    frames = int(os.environ.get(TRACE_FRAMES_ENV, "25"))
    if frames:
        tracemalloc.start(frames)
    numbers = itertools.count(1)

    def dump(_signum, _frame) -> None:
        base = Path(directory) / f"{os.getpid()}-{next(numbers)}"
        gc.collect()  # what is kept, not garbage awaiting a collection
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(f"{base}.snapshot")
        _write_allocator_stats(Path(f"{base}.mallocstats"))
        _write_census(Path(f"{base}.census"))

    signal.signal(signal.SIGUSR2, dump)


def _write_allocator_stats(target: Path) -> None:
    """pymalloc's arenas, pools and blocks by size class (sys._debugmallocstats writes them to C's stderr)."""
    saved = os.dup(2)
    try:
        with target.open("wb") as out:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _write_census(target: Path) -> None:
    """The objects the garbage collector tracks, counted by type, most numerous first."""
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    target.write_text("".join(f"{n}\t{name}\n" for name, n in counts.most_common(200)))
