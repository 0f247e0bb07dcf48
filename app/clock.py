"""The service's one clock: every timestamp it writes and every "how long ago" it decides reads
`now_ms()` (wall time, ms since the epoch) or `monotonic()` (seconds, for caches and back-off).

The wall time is PostgreSQL's (SPEC 13.1): each process measures how far its host's clock is from
the database's (one SELECT of clock_timestamp(), taken at the middle of its round trip) every
SYNC_SECONDS and adds that offset to every reading. A host whose clock is minutes off then times
nothing out early and writes no timestamp from the future, at no cost per request. Until the first
measurement, or while the database does not answer, the last known offset (at first none) holds.

Tests move the clock with `shift(seconds)` instead of sleeping to separate two timestamps or to let
a key or a cache entry expire. The shift is process-wide; nothing in the service sets it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

SYNC_SECONDS = 30.0
RETRY_SYNC_SECONDS = 5.0
OFFSET_WORTH_A_WARNING_NS = 1_000_000_000  # NTP keeps hosts within milliseconds; a second off is a broken clock

_shift_ns = 0
_offset_ns = 0  # the database's clock minus this host's
_source: Callable[[], int] | None = None  # the database's time, ns since the epoch
_next_sync = 0.0  # on the monotonic clock
_sync_lock = threading.Lock()


def now_ms() -> int:
    """Milliseconds since the epoch (UTC) on the database's clock, as every timestamp of the API, the
    tables and Kafka."""
    if _source is not None and time.monotonic() >= _next_sync:
        _sync()
    # time_ns avoids the float rounding of time.time() * 1000.
    return (time.time_ns() + _offset_ns + _shift_ns) // 1_000_000


def monotonic() -> float:
    """Seconds on a clock that never goes back: for ages of cache entries and quiet periods."""
    return time.monotonic() + _shift_ns / 1e9


def follow(source: Callable[[], int] | None) -> None:
    """Read wall time as `source` tells it (nanoseconds since the epoch), measured again every SYNC_SECONDS;
    None: this host's clock alone."""
    global _source, _next_sync, _offset_ns
    _source, _next_sync = source, 0.0
    if source is None:
        _offset_ns = 0


def offset_seconds() -> float:
    """How far the database's clock is ahead of this host's, as last measured."""
    return _offset_ns / 1e9


def _sync() -> None:
    global _offset_ns, _next_sync
    if _source is None or not _sync_lock.acquire(blocking=False):
        return  # another thread is measuring: the offset it replaces is good for now
    try:
        _next_sync = time.monotonic() + RETRY_SYNC_SECONDS  # a failed measurement is not retried at every call
        before = time.time_ns()
        theirs = _source()
        after = time.time_ns()
        _offset_ns = theirs - (before + after) // 2
        _next_sync = time.monotonic() + SYNC_SECONDS
        if abs(_offset_ns) > OFFSET_WORTH_A_WARNING_NS:
            log.warning(
                "this host's clock is %.1f s off the database's: the service uses the database's", -offset_seconds()
            )
    except Exception as err:  # the database is away: the last offset holds
        log.warning("could not read the database's clock (%s); keeping an offset of %.3f s", err, offset_seconds())
    finally:
        _sync_lock.release()


def _after_fork_in_child() -> None:
    global _sync_lock
    _sync_lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


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
