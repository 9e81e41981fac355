"""A coordinator's drain, begun by an admin's Drain call or by SIGTERM: no new sessions here,
open sessions' steps served for a grace (each answer telling the robot to move), then refused,
so that robots move to the other coordinators without a failed step."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True)
class DrainState:
    grace_left_s: float  # until steps are refused too
    already_draining: bool  # begun before this call


class Drain:
    """Draining is for good: once begun it only ends with the process."""

    def __init__(self, default_grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.default_grace_s, self._clock = default_grace_s, clock
        self._lock = threading.Lock()
        self._steps_until: float | None = None  # None: not draining
        self._listeners: list[Callable[[], None]] = []

    def listen(self, on_begin: Callable[[], None]) -> None:
        """Call on_begin when the drain begins (at once if it has)."""
        with self._lock:
            self._listeners.append(on_begin)
            begun = self._steps_until is not None
        if begun:
            on_begin()

    def begin(self, grace_s: float = 0.0) -> DrainState:
        """Drain with steps served grace_s more (0: the default); a drain already under way
        keeps the earlier end of its grace. ValueError for a grace that is not finite or < 0."""
        if not (math.isfinite(grace_s) and grace_s >= 0):
            raise ValueError(f"grace_s must be a finite number of seconds >= 0, got {grace_s}")
        now = self._clock()
        end = now + (grace_s or self.default_grace_s)
        with self._lock:
            already = self._steps_until is not None
            if self._steps_until is None or end < self._steps_until:
                self._steps_until = end
            left = self._steps_until - now
            listeners = [] if already else list(self._listeners)
        if not already:
            log.warning("coordinator draining: no new sessions; steps served %.1fs more", left)
        for on_begin in listeners:
            on_begin()
        return DrainState(left, already)

    def draining(self) -> bool:
        return self._steps_until is not None

    def steps_refused(self) -> bool:
        """Past the grace: steps are refused too."""
        left = self.grace_left_s()
        return left is not None and left <= 0

    def grace_left_s(self) -> float | None:
        """Seconds more that steps are served; None when not draining (0: refused now)."""
        until = self._steps_until
        return None if until is None else max(0.0, until - self._clock())
