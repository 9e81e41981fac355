"""A quality table for tests of the degrade policy and the planner: three stages, FULL best and
slowest, deeper exits better and slower, the student fastest; errors relative to FULL's 1.0."""

from __future__ import annotations

from typing import Any

from fallback.policy import PolicyConfig

# mode name -> (error, success, p50_ms)
GOOD = {
    "full": (1.0, 0.90, 30.0),
    "early_exit_0": (1.25, 0.80, 8.0),
    "early_exit_1": (1.1, 0.85, 18.0),
    "fallback": (1.4, 0.75, 5.0),
    "state_lost": (3.0, 0.40, 30.0),
}


def table_json(modes: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    return {
        "modes": {
            name: {"error": e, "success": s, "p50_ms": p} for name, (e, s, p) in modes.items()
        }
    }


def policy(**changes: tuple[float, float, float]) -> PolicyConfig:
    """The GOOD table with some modes changed, default thresholds."""
    return PolicyConfig.from_quality_table(table_json({**GOOD, **changes}))
