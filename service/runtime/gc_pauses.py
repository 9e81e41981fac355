"""Python's cyclic garbage collector, out of the way of steps.

A full (generation 2) collection walks every object the collector tracks, and in a coordinator
or a shard those are mostly what start-up made: torch, gRPC, protobuf, the model. Measured on
the 2-core machine (`actionmesh bench`, 600 steps): full collections of 13-130 ms with the
process stopped, one of them in the middle of a coordinator's steps (95 ms: every robot
stepping then was late by that much, several ticks at 50 Hz). Frozen once the process is
ready, start-up's objects are left out of every later collection; what serving makes is still
collected, by collections that walk only that.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Collect once, then freeze what is left; call when the process is about to serve."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "%d start-up objects left out of garbage collection (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1e3,
    )
