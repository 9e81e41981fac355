"""How long one stage call may take before its replica is suspected: a small multiple of the
stage's usual latency, not the step's whole deadline.

Waiting for a stage call up to the step's deadline makes a hung replica (SIGSTOP, a stalled
host) indistinguishable from a short deadline: the call is cut by the deadline, the replica is
never blamed, and every step routed to it fails until its lease expires. A replica that has
not answered within a few times what the stage usually takes is suspected instead, early
enough that the step can still fail over to another replica; and a lone replica that took
all the step's time though that was several times its usual is suspected too, so that the
next steps degrade at once rather than wait for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

LATENCY_SMOOTHING = 0.2  # weight of the newest call in a stage's usual latency


@dataclass(frozen=True)
class Patience:
    multiple: float = 6.0  # a replica slower than this many times the usual is suspected
    min_s: float = 0.15  # never give up on a call sooner (a noisy machine's scheduling jitter)

    def fair_s(self, usual_s: float | None, stage_timeout_s: float) -> float:
        """Time within which a replica with the stage's usual latency surely answers: one
        that times out after at least this long is at fault. Unknown latency: the stage
        timeout (as before any call was measured)."""
        if usual_s is None:
            return stage_timeout_s
        return min(stage_timeout_s, self.multiple * usual_s)

    def timeout_s(
        self, usual_s: float | None, stage_timeout_s: float, time_left_s: float, spare: bool
    ) -> float:
        """The call's own timeout, never past the stage timeout or the step's deadline. With
        a `spare` replica (another, not suspected) to fail over to: the fair time, but at
        least `min_s` (while that leaves half of the step's time for the spare). Without one,
        nothing is gained by giving up early: the call may take all the time there is."""
        if not spare:
            return min(stage_timeout_s, time_left_s)
        fair = self.fair_s(usual_s, stage_timeout_s)
        return min(stage_timeout_s, time_left_s, max(fair, min(self.min_s, time_left_s / 2)))


class UsualLatency:
    """Per stage (or other key: serve_modes keys whole pipeline passes by depth), a smoothed
    latency of the calls that succeeded (thread-safe)."""

    def __init__(self) -> None:
        self._by_stage: dict[int, float] = {}
        self._lock = threading.Lock()

    def observe(self, stage: int, seconds: float) -> None:
        with self._lock:
            old = self._by_stage.get(stage)
            self._by_stage[stage] = (
                seconds if old is None else old + LATENCY_SMOOTHING * (seconds - old)
            )

    def of(self, stage: int) -> float | None:
        with self._lock:
            return self._by_stage.get(stage)
