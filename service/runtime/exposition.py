"""Which metric families each kind of process exposes on /metrics.

Every module's metrics register in prometheus_client's default registry at import, and a
process imports more than its own (a shard imports the metrics module the coordinator's
metrics live in). /metrics shows a role's own families and those every process shares, so a
shard exports only shard series and dashboards never sum a coordinator-only family that is
stuck at 0 in shards. Families not named actionmesh_* (process_*, python_*) always show.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics
from prometheus_client.metrics_core import Metric

Role = Literal["coordinator", "shard"]

# Family names (a counter's without _total), as prometheus_client reports them.
SHARED = frozenset(
    {
        "actionmesh_build_info",
        "actionmesh_ready",
        "actionmesh_model_version_info",
        "actionmesh_etcd_connected",
        "actionmesh_etcd_watch_restarts",
        "actionmesh_checkpoint_retries",
        "actionmesh_log_lines_dropped",
    }
)
BY_ROLE: dict[Role, frozenset[str]] = {
    "coordinator": frozenset(
        {
            "actionmesh_step_latency_seconds",
            "actionmesh_stage_call_latency_seconds",
            "actionmesh_batch_size",
            "actionmesh_step_errors",
            "actionmesh_stored_replies",
            "actionmesh_replayed_steps",
            "actionmesh_state_resets",
            "actionmesh_stored_states_unreadable",
            "actionmesh_replica_suspected",
            "actionmesh_replica_banned",
            "actionmesh_session_version_switches",
            "actionmesh_answers",
            "actionmesh_shed",
            "actionmesh_admission_queued",
            "actionmesh_degraded_seconds",
            "actionmesh_redis_connected",
            "actionmesh_state_retries",
            "actionmesh_state_deadline_give_ups",
            "actionmesh_redis_commit_seconds",
            "actionmesh_auth_refusals",
        }
    ),
    "shard": frozenset(
        {
            "actionmesh_shard_forward_latency_seconds",
            "actionmesh_shard_forward_items",
            "actionmesh_shard_version_refusals",
            "actionmesh_shard_reloads",
            "actionmesh_shard_reload_retries",
            "actionmesh_leadership_changes",
        }
    ),
}
# The client library's, exported by the robot's process if it serves metrics; never a server's.
CLIENT = frozenset(
    {
        "actionmesh_client_retries",
        "actionmesh_client_failovers",
        "actionmesh_client_buffer_events",
    }
)


class _RoleView:
    """A collector showing the default registry's families that `role` exposes."""

    def __init__(self, role: Role) -> None:
        self._names = SHARED | BY_ROLE[role]

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if not family.name.startswith("actionmesh_") or family.name in self._names:
                yield family


def registry_for(role: Role) -> CollectorRegistry:
    """What /metrics serves in a process of `role`; without the `*_created` gauges
    prometheus_client adds beside every counter and histogram (Prometheus does not read them
    from the text format; they would double the series)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RoleView(role))
    return registry
