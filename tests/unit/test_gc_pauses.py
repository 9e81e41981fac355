"""Start-up's objects are frozen out of garbage collection; what comes after is still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.runtime.gc_pauses import freeze_startup_objects


@pytest.fixture
def unfrozen_after() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as before


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("unfrozen_after")
def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected() -> None:
    kept = [[i] for i in range(10_000)]  # start-up's objects, tracked by the collector
    freeze_startup_objects()
    assert gc.get_freeze_count() >= len(kept)
    _Cycle()  # garbage made while serving: a reference cycle only the collector frees
    assert gc.collect() >= 1
