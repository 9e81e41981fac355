"""Polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll until condition() is truthy; the seconds it took. Fails with `what` at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout_s}s: {what}")
