"""Waiting for something another process does, without timed assertions."""

from __future__ import annotations

import time

import pytest


def wait_for(condition, timeout: float, message: str, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy (which is returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
