"""Waiting for something another process does, without timed assertions."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(condition, timeout: float, message: str | Callable[[], str], interval: float = 0.05):
    """Poll `condition()` until it returns something truthy (which is returned); fail after `timeout` s.
    `message` may be a callable: it is called then, so it tells the state at the failure, not at the start."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message() if callable(message) else message}")
        time.sleep(interval)
