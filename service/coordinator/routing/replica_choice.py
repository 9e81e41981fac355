"""Route choice as pure functions: which replica serves a stage, and how long a failed one waits.

The caller reads the clock and does the I/O; these take the routing view, the bans and `now`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def serving_version(views: Mapping[int, StageView], n_stages: int) -> str | None:
    """The model version to build pipelines from: one that every stage 0..n-1 has a replica of.

    The leaders' version when they agree (the cluster's choice); otherwise the greatest by
    name of the versions every stage offers (deterministic, so every coordinator picks the
    same); None while no version is offered by every stage.
    """
    offered = [
        {r.model_version for r in views[k].replicas.values()} if k in views else set()
        for k in range(n_stages)
    ]
    common = set.intersection(*offered) if offered else set()
    leaders = {
        leader.model_version
        for k in range(n_stages)
        if k in views and (leader := views[k].leader) is not None
    }
    if len(leaders) == 1 and leaders <= common:
        return next(iter(leaders))
    return max(common) if common else None


def session_version(
    views: Mapping[int, StageView],
    n_stages: int,
    desired: str | None,
    current: str | None,
    usable: Callable[[str], bool],
) -> str | None:
    """The model version a session's next step runs on; None when no pipeline can serve it.

    The desired version (`ckpt promote`) once every stage offers it; else the session's own
    (`current`; None for a session without history, which takes any whole version) while every
    stage offers it. A session whose version no stage offers any more (retired) moves to a
    whole one; one whose version is only partly offered waits (UNAVAILABLE) rather than
    switching versions behind the operator's back. `usable` vets a version's interface.
    """

    def whole(version: str | None) -> bool:
        return (
            version is not None
            and all(k in views and views[k].offers(version) for k in range(n_stages))
            and usable(version)
        )

    if whole(desired):
        return desired
    if current is not None:
        if whole(current):
            return current
        if any(view.offers(current) for view in views.values()):
            return None
    fallback = serving_version(views, n_stages)
    return fallback if whole(fallback) else None
