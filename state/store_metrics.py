"""Prometheus metrics of the state store, created once per process (the registry rejects twins)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STATE_RETRIES = Counter(
    "actionmesh_state_retries_total",
    "Store calls retried after a connection error or timeout, by operation.",
    ["operation"],
)

STATE_DEADLINE_GIVE_UPS = Counter(
    "actionmesh_state_deadline_give_ups_total",
    "Store calls of a step given up at the step's deadline because the store had not answered "
    "(the step is answered UNAVAILABLE; a commit may still land), by operation.",
    ["operation"],
)

# A commit is one Lua call on a nearby server: sub-millisecond normally, so the buckets start low.
REDIS_COMMIT_SECONDS = Histogram(
    "actionmesh_redis_commit_seconds",
    "Wall time of a session commit, retries included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

ETCD_CONNECTED = Gauge(
    "actionmesh_etcd_connected",
    "1 while this process's etcd client reaches etcd, 0 while it retries; by client "
    "(membership: a shard's lease and campaign, routing_table: a coordinator's watch).",
    ["client"],
)

ETCD_WATCH_RESTARTS = Counter(
    "actionmesh_etcd_watch_restarts_total",
    "etcd watches re-created after their stream broke (etcd restarted, member lost, network).",
)

LEADERSHIP_CHANGES = Counter(
    "actionmesh_leadership_changes_total",
    "Times a replica in this process became its stage's leader, by stage; summed over every "
    "shard it counts the stage's leader changes.",
    ["stage"],
)
