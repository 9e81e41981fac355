"""Prometheus metrics of the state store, created once per process (the registry rejects twins)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STATE_RETRIES = Counter(
    "actionmesh_state_retries_total",
    "Store calls retried after a connection error or timeout, by operation.",
    ["operation"],
)

# A commit is one Lua call on a nearby server: sub-millisecond normally, so the buckets start low.
REDIS_COMMIT_SECONDS = Histogram(
    "actionmesh_redis_commit_seconds",
    "Wall time of a session commit, retries included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
