"""Where a cluster lives in etcd, under `/actionmesh/<cluster>/`:

- `stages/<k>/leader`: the leader's ReplicaInfo JSON, bound to its lease (created only if absent);
- `stages/<k>/replicas/<replica_id>`: every live replica, leader too, bound to the same lease;
- `model/desired`: the model version the cluster should serve (set by `ckpt promote` and
  `ckpt rollback`; no lease: it outlives every process).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from state.leadership import ReplicaInfo, StageView

_log = logging.getLogger(__name__)


def cluster_prefix(cluster: str) -> str:
    return f"/actionmesh/{cluster}/"


def stages_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}stages/"


def desired_version_key(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}model/desired"


def desired_version_value(version: str, by: str, at: str) -> bytes:
    return json.dumps({"version": version, "by": by, "at": at}, sort_keys=True).encode()


def parse_desired_version(value: bytes | None) -> str | None:
    """The version named by the desired-version key; None when unset or unreadable."""
    if value is None:
        return None
    try:
        version = json.loads(value)["version"]
    except (ValueError, TypeError, KeyError) as exc:
        _log.warning("etcd desired version %r unreadable, ignored: %s", value, exc)
        return None
    return version if isinstance(version, str) and version else None


def leader_key(cluster: str, stage: int) -> str:
    return f"{stages_prefix(cluster)}{stage}/leader"


def replica_key(cluster: str, stage: int, replica_id: str) -> str:
    return f"{stages_prefix(cluster)}{stage}/replicas/{replica_id}"


def stage_views(prefix: str, entries: Mapping[str, bytes]) -> dict[int, StageView]:
    """The routing table from the raw keys under `prefix`; unreadable entries are skipped."""
    leaders: dict[int, ReplicaInfo] = {}
    replicas: dict[int, dict[str, ReplicaInfo]] = {}
    for key, value in sorted(entries.items()):
        if not key.startswith(prefix):
            continue
        parts = key.removeprefix(prefix).split("/")
        try:
            info = ReplicaInfo.from_json(value)
        except (ValueError, TypeError) as exc:
            _log.warning("etcd key=%s unreadable, ignored: %s", key, exc)
            continue
        if len(parts) == 2 and parts[1] == "leader" and parts[0].isdigit():
            leaders[int(parts[0])] = info
        elif len(parts) == 3 and parts[1] == "replicas" and parts[0].isdigit():
            replicas.setdefault(int(parts[0]), {})[parts[2]] = info
    views = {}
    for stage in sorted(leaders.keys() | replicas.keys()):
        members = replicas.get(stage, {})
        leader = leaders.get(stage)
        if leader is not None:  # registered an instant later, or its replicas key was lost
            members = {leader.replica_id: leader, **members}
        views[stage] = StageView(stage, leader, members)
    return views
