"""workers.heap: with SAMPLEDB_HEAP_SNAPSHOT_DIR set, a process writes a heap snapshot on SIGUSR2 that two of
can be diffed to name what grew."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
GROWING = """
import os, signal, sys, time
from workers import heap
heap.trace_if_asked()
kept = []
os.kill(os.getpid(), signal.SIGUSR2)
kept.extend(bytearray(1000) for _ in range(5000))  # 5 MB that stay
os.kill(os.getpid(), signal.SIGUSR2)
time.sleep(0.5)
"""
GROWTH_LINE = next(n for n, line in enumerate(GROWING.splitlines(), 1) if line.startswith("kept.extend"))


def test_two_snapshots_name_the_line_whose_memory_grew(tmp_path):
    subprocess.run(
        [sys.executable, "-c", GROWING],
        cwd=ROOT,
        env={"SAMPLEDB_HEAP_SNAPSHOT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    wait_for(lambda: len(list(tmp_path.glob("*.snapshot"))) == 2, 10, "two snapshots")
    first, second = sorted(tmp_path.glob("*.snapshot"), key=lambda p: int(p.stem.split("-")[1]))
    grown = tracemalloc.Snapshot.load(str(second)).compare_to(tracemalloc.Snapshot.load(str(first)), "lineno")[0]
    assert grown.size_diff > 5_000_000 and grown.traceback[0].lineno == GROWTH_LINE, grown


POOLED = """
import os, signal, time
from workers import heap
heap.trace_if_asked()
kept = [["submission", n] for n in range(200_000)]  # small objects: pymalloc's arenas
os.kill(os.getpid(), signal.SIGUSR2)
time.sleep(0.5)
"""


def test_without_tracing_a_signal_writes_the_allocators_arenas_and_the_objects_by_type(tmp_path):
    """SAMPLEDB_HEAP_TRACE_FRAMES=0: no tracemalloc (its cost would change what is measured), but what pymalloc
    holds (arenas in use against bytes in live blocks) and which objects are alive, for a soak's diagnosis."""
    subprocess.run(
        [sys.executable, "-c", POOLED],
        cwd=ROOT,
        env={"SAMPLEDB_HEAP_SNAPSHOT_DIR": str(tmp_path), "SAMPLEDB_HEAP_TRACE_FRAMES": "0", "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    wait_for(lambda: len(list(tmp_path.glob("*.census"))) == 1, 10, "one census")
    assert not list(tmp_path.glob("*.snapshot"))
    (stats,) = tmp_path.glob("*.mallocstats")
    arenas = next(line for line in stats.read_text().splitlines() if line.startswith("# arenas allocated current"))
    assert int(arenas.split("=")[1].replace(",", "")) >= 10, arenas  # 200,000 lists take more than 10 MiB
    (census,) = tmp_path.glob("*.census")
    counts = {name: int(n) for n, name in (line.split("\t") for line in census.read_text().splitlines())}
    assert counts["list"] >= 200_000, list(counts.items())[:5]


def test_without_the_setting_nothing_is_traced(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tracemalloc; from workers import heap; heap.trace_if_asked(); print(tracemalloc.is_tracing())",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False"


FRAGMENTED = """
import random, psutil
from workers import heap
process = psutil.Process()
kept, freed = [], []
for n in range(6000):  # 2-60 KB each: glibc's heap, below its mmap threshold
    (kept if n % 50 == 0 else freed).append(bytearray(random.randint(2_000, 60_000)))
freed.clear()  # 98% of it is free, but every 50th block pins its part of the heap
before = process.memory_info().rss
heap.give_back_free_memory()
print(before, process.memory_info().rss)
"""


def test_free_memory_pinned_between_live_blocks_goes_back_to_the_system():
    """What a pool process does after each task: RSS falls to about what is still alive. Without it, a process
    keeps the pages of everything it ever freed between blocks still in use (glibc returns only the top)."""
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENTED], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    before, after = (int(n) / 2**20 for n in done.stdout.split())
    print(f"RSS with the freed memory held: {before:.0f} MB; after give_back_free_memory: {after:.0f} MB")
    assert before > 150 and after < before / 3, (before, after)
