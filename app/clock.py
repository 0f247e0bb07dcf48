"""The service's one clock: every timestamp it writes and every "how long ago" it decides here reads
`now_ms()` (wall time, ms since the epoch) or `monotonic()` (seconds, for caches and back-off).

Tests move it with `shift(seconds)` instead of sleeping to separate two timestamps or to let a
key or a cache entry expire. The shift is process-wide; nothing in the service sets it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_shift_ns = 0


def now_ms() -> int:
    """Milliseconds since the epoch (UTC), as every timestamp of the API, the tables and Kafka."""
    # time_ns avoids the float rounding of time.time() * 1000.
    return (time.time_ns() + _shift_ns) // 1_000_000


def monotonic() -> float:
    """Seconds on a clock that never goes back: for ages of cache entries and quiet periods."""
    return time.monotonic() + _shift_ns / 1e9


def shift(seconds: float) -> None:
    """Move the clock forward (tests): later readings are `seconds` later than they would be."""
    global _shift_ns
    if seconds < 0:
        raise ValueError("the clock only moves forward")
    _shift_ns += round(seconds * 1e9)


@contextmanager
def shifted() -> Iterator[None]:
    """Undo every shift made inside the block when it ends (a test's fixture)."""
    global _shift_ns
    before = _shift_ns
    try:
        yield
    finally:
        _shift_ns = before
