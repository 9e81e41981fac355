"""Route choice as pure functions: which replica serves a stage, and how long a failed one waits.

The caller reads the clock and does the I/O; these take the routing view, the bans and `now`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from state.leadership import ReplicaInfo, StageView


@dataclass(frozen=True)
class Ban:
    """A suspected replica: `failures` in a row, not to be used before `until`. A ban holds
    for one epoch (lease) of the replica: one that comes back with a new lease starts clean."""

    failures: int
    until: float
    epoch: int = 0


@dataclass(frozen=True)
class BanPolicy:
    base_s: float = 0.5  # first ban
    max_s: float = 30.0  # a ban doubles with each failure in a row, up to this

    def after_failure(self, previous: Ban | None, now: float, epoch: int = 0) -> Ban:
        same_epoch = previous is not None and previous.epoch == epoch
        failures = previous.failures + 1 if previous is not None and same_epoch else 1
        doublings = min(failures - 1, 30)  # 2**30 bans are longer than any max_s: no overflow
        return Ban(failures, now + min(self.max_s, self.base_s * 2**doublings), epoch)


def is_banned(replica: ReplicaInfo, bans: Mapping[str, Ban], now: float) -> bool:
    ban = bans.get(replica.replica_id)
    return ban is not None and ban.until > now and ban.epoch == replica.lease_id


def candidates(
    view: StageView, version: str, bans: Mapping[str, Ban], now: float, tried: frozenset[str]
) -> list[ReplicaInfo]:
    """Replicas to try for a stage, best first: the leader, then standbys by replica id.

    Only replicas of `version` (a pipeline never mixes versions) not yet tried in this step.
    Banned replicas come last, soonest-released first: a ban moves a replica to the back of
    the line, it never makes a stage unservable while the replica is still registered.
    """
    leader_id = view.leader.replica_id if view.leader is not None else None
    pool = {r.replica_id: r for r in view.replicas.values()}
    # A replica restarted under the same id re-registers at once, while its old leader key
    # lives until the old lease expires: the registration is the live one.
    if view.leader is not None and view.leader.replica_id not in pool:
        pool[view.leader.replica_id] = view.leader
    eligible = sorted(
        (r for r in pool.values() if r.model_version == version and r.replica_id not in tried),
        key=lambda r: (r.replica_id != leader_id, r.replica_id),
    )
    free = [r for r in eligible if not is_banned(r, bans, now)]
    banned = [r for r in eligible if is_banned(r, bans, now)]
    return free + sorted(banned, key=lambda r: bans[r.replica_id].until)
