"""Waiting for something to happen in another thread or process: the one helper every test polls with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 30.0, *, what: str = "", interval: float = 0.05
) -> T:
    """Call `condition` until it returns something true, and return that; fail the test, naming `what`
    and how long it waited, when `timeout` seconds pass first (the condition is asked once more at the
    deadline, so a slow machine is given every chance)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            found = condition()
            assert found, f"timed out after {timeout:g}s waiting for {what or 'the condition'}"
            return found
        time.sleep(interval)
