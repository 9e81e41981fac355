"""Degraded modes: early-exit choice, distilled fallback, admission and shedding. Filled by the degraded-modes issue."""
