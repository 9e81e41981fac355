"""Latency summaries printed by the demo and the bench."""

from __future__ import annotations

import statistics


def percentile_ms(samples_s: list[float], pct: float) -> float:
    """The pct-th percentile in milliseconds (inclusive method); 0 for no samples."""
    if not samples_s:
        return 0.0
    if len(samples_s) == 1:
        return samples_s[0] * 1e3
    return statistics.quantiles(samples_s, n=100, method="inclusive")[int(pct) - 1] * 1e3
