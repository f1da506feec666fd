"""Waiting in tests for a condition the test cannot be told about by an event (a metric over HTTP, a
process ending): poll it, with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Whether `condition()` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
