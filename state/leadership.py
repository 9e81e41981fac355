"""Stage leadership: plain records and the narrow interfaces its backends implement.

A replica registers itself for its stage and campaigns for the stage's leader key; a
coordinator keeps a routing table fed by a watch. Knows nothing of etcd or gRPC.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol


class LeadershipUnavailable(Exception):
    """The leadership backend could not be reached within the start timeout; retry later."""


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica announces; `lease_id` is its epoch (a new lease, a new epoch)."""

    stage: int
    replica_id: str
    address: str  # host:port of its StageService
    model_version: str
    lease_id: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReplicaInfo:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class StageView:
    """One stage as the routing table sees it: the leader, and every live replica."""

    stage: int
    leader: ReplicaInfo | None = None
    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)  # by replica_id, leader too

    def offers(self, version: str) -> bool:
        """Some live replica of this stage serves `version`."""
        return any(r.model_version == version for r in self.replicas.values())


class Role(enum.Enum):
    STARTING = "starting"
    LEADER = "leader"
    STANDBY = "standby"
    STOPPED = "stopped"


class ReplicaMembership(Protocol):
    """A replica's side: registered for its stage, leader or standby, until stop()."""

    def start(self) -> None:
        """Register and start campaigning in the background; returns at once."""

    @property
    def role(self) -> Role: ...

    @property
    def info(self) -> ReplicaInfo:
        """What this replica currently announces."""

    def step_aside(self) -> None:
        """Give up leadership and stop campaigning until announce()."""

    def announce(self, info: ReplicaInfo) -> None:
        """Advertise new details (a new model version) and campaign again."""

    def retire(self) -> None:
        """Stop campaigning for good (the process is stopping): keep leadership if held until
        stop(), never take it up."""

    def stop(self) -> None:
        """Revoke the lease so that a standby takes over at once."""


class RoutingTable(Protocol):
    """A coordinator's side: the latest view of every stage, kept current by a watch."""

    def start(self) -> None:
        """Load the current state and start watching; returns once the first load is done."""

    def snapshot(self) -> dict[int, StageView]:
        """The current table from memory: never a network call (it is on the per-step path)."""

    def desired_version(self) -> str | None:
        """The model version the cluster should move to (`ckpt promote`), from memory."""

    def desired_revision(self) -> int:
        """The backend's revision at which desired_version() was seen (0: none), so that two
        coordinators that briefly disagree can tell whose desired version is newer."""

    @property
    def connected(self) -> bool:
        """False while the backend is unreachable and the table may be stale."""

    def subscribe(self, callback: Callable[[dict[int, StageView]], None]) -> None:
        """Call back (on the watch thread) with the new table after each change."""

    def stop(self) -> None: ...
