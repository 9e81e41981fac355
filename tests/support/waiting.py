"""Polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll until condition() is truthy; the seconds it took. Fails with `what` at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def until_no(
    error: type[Exception], call: Callable[[], T], timeout_s: float = 30.0, pause_s: float = 0.2
) -> T:
    """call() until it stops raising `error` (pytest.fail if it never does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except error as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"still failing after {timeout_s}s: {exc}")
            time.sleep(pause_s)
