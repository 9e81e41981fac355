"""The offline quality table: how well, and how fast, each serve mode answers.

Measured once per model version against an expert (action MSE, task success rate, p50
latency) and shipped as JSON:

    {"modes": {"full": {"error": .., "success": .., "p50_ms": ..},
               "early_exit_0": {...}, ..., "early_exit_<n-2>": {...},
               "fallback": {...}, "state_lost": {...}}}

`early_exit_<k>` is stage k's exit head; there is one per stage but the last (the last
stage's head *is* FULL), so the table also says how many stages the model has.
`state_lost` is a fresh-state answer after the session's state was reset: it is never
chosen, but its reply needs a confidence like any other degraded one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FULL = "full"
FALLBACK = "fallback"
STATE_LOST = "state_lost"
_EARLY_EXIT_PREFIX = "early_exit_"


def early_exit_name(stage: int) -> str:
    """The table's (and the runtime confidences') key for stage `stage`'s exit head."""
    return f"{_EARLY_EXIT_PREFIX}{stage}"


@dataclass(frozen=True)
class ModeQuality:
    error: float  # action MSE against the expert; lower is better
    success: float  # task success rate in [0, 1]
    p50_ms: float  # median latency of a step served this way

    def __post_init__(self) -> None:
        for name in ("error", "success", "p50_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.success > 1:
            raise ValueError(f"success is a rate in [0, 1], got {self.success!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModeQuality:
        if set(data) != {"error", "success", "p50_ms"}:
            raise ValueError(f"a mode needs exactly error, success, p50_ms; got {sorted(data)}")
        return cls(float(data["error"]), float(data["success"]), float(data["p50_ms"]))


def quality_confidence(mode: ModeQuality, full: ModeQuality) -> float:
    """A mode's confidence in [0, 1]: FULL's error over its own, so FULL itself is 1.0.

    Relative to FULL because FULL is what a controller was tuned against: an answer twice as
    far from the expert as FULL's gets 0.5, whatever the task's absolute error scale.
    """
    if mode.error <= full.error:
        return 1.0
    return full.error / mode.error


@dataclass(frozen=True)
class QualityTable:
    full: ModeQuality
    early_exits: tuple[ModeQuality, ...]  # index k: stage k's exit head
    fallback: ModeQuality
    state_lost: ModeQuality

    @property
    def n_stages(self) -> int:
        return len(self.early_exits) + 1

    def confidence(self, name: str) -> float:
        """`quality_confidence` of the mode named as in the table (`full`, `early_exit_1`, ...)."""
        return quality_confidence(self._by_name()[name], self.full)

    def _by_name(self) -> dict[str, ModeQuality]:
        exits = {early_exit_name(k): q for k, q in enumerate(self.early_exits)}
        return {FULL: self.full, FALLBACK: self.fallback, STATE_LOST: self.state_lost, **exits}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityTable:
        """Parse the JSON shape above; unknown or missing modes are an error, not a default.
        Other top-level keys (how the table was measured: seed, episodes, ...) are ignored."""
        if not isinstance(data.get("modes"), Mapping):
            raise ValueError(f'a quality table is {{"modes": {{...}}}}; got keys {sorted(data)}')
        modes: Mapping[str, Any] = data["modes"]
        missing = {FULL, FALLBACK, STATE_LOST} - set(modes)
        if missing:
            raise ValueError(f"quality table lacks modes {sorted(missing)}")
        exit_names = [name for name in modes if name.startswith(_EARLY_EXIT_PREFIX)]
        expected = [early_exit_name(k) for k in range(len(exit_names))]
        if sorted(exit_names) != sorted(expected):
            raise ValueError(
                f"early exits must be {expected} (one per stage but the last); got {sorted(exit_names)}"
            )
        unknown = set(modes) - {FULL, FALLBACK, STATE_LOST, *expected}
        if unknown:
            raise ValueError(f"quality table has unknown modes {sorted(unknown)}")
        return cls(
            full=ModeQuality.from_dict(modes[FULL]),
            early_exits=tuple(ModeQuality.from_dict(modes[name]) for name in expected),
            fallback=ModeQuality.from_dict(modes[FALLBACK]),
            state_lost=ModeQuality.from_dict(modes[STATE_LOST]),
        )
