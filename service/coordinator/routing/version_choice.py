"""Which model version a session's step runs on, as pure functions over an immutable snapshot.

The snapshot is built off the step path (routing/versions.py) whenever the routing table or
the desired version changes: a version is *whole* once every stage offers it and it has been
vetted (its interface checked against this coordinator's model). A step only reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from state.leadership import StageView


@dataclass(frozen=True, kw_only=True)
class VersionSnapshot:
    whole: frozenset[str]  # offered by every stage and vetted
    offered: frozenset[str]  # offered by at least one stage
    desired: str | None  # the operator's choice (`ckpt promote`), if any
    desired_revision: int = 0  # the etcd revision `desired` was seen at
    serving: str | None  # the whole version to start new sessions on when none is desired
    # The version new sessions last started on. While no version is whole (every replica of a
    # stage down), new sessions start on it if some stage still offers it, served degraded and
    # labelled: a robot that opens a session mid-outage gets actions, not UNAVAILABLE.
    last_start: str | None = None


@dataclass(frozen=True, kw_only=True)
class Stay:
    """Run the step on the session's own version (served degraded if it is not whole)."""

    version: str


@dataclass(frozen=True, kw_only=True)
class Switch:
    """Move the session to `target`: its states there are rebuilt by replaying the
    observation log, in chunks over several steps, while `current` goes on answering."""

    current: str
    target: str


@dataclass(frozen=True, kw_only=True)
class NoPipeline:
    """A session without history, and no whole version to start it on."""


VersionChoice = Stay | Switch | NoPipeline


def choose_version(
    snapshot: VersionSnapshot, current: str | None, moved_at_revision: int = 0
) -> VersionChoice:
    """The version for a step of a session on `current` (None: no step served yet), last
    moved by a desired version seen at etcd revision `moved_at_revision`.

    - A new session starts on the desired version when it is whole, else on the serving one;
      while none is whole, on the version sessions last started on (served degraded).
    - A session whose version is not the desired one switches to it once it is whole, unless
      the session was moved by a newer desired version than this one (a coordinator whose view
      lags must not move it back: two coordinators would move it back and forth).
    - A session whose version is gone from every stage switches to the serving version.
    - Otherwise the session stays: a version only partly offered (stages reloading) is served
      degraded rather than switched behind the operator's back.
    """
    desired = snapshot.desired if snapshot.desired in snapshot.whole else None
    if current is not None and snapshot.desired_revision < moved_at_revision:
        desired = None  # older than what moved the session: not ours to follow
    start = desired or (snapshot.serving if snapshot.serving in snapshot.whole else None)
    if current is None:
        if start is None and snapshot.last_start in snapshot.offered:
            start = snapshot.last_start
        return Stay(version=start) if start is not None else NoPipeline()
    if desired is not None and desired != current:
        return Switch(current=current, target=desired)
    if current not in snapshot.offered and start is not None and start != current:
        return Switch(current=current, target=start)
    return Stay(version=current)


def start_version(snapshot: VersionSnapshot) -> str | None:
    """The whole version a new session starts on now (None: none is whole)."""
    choice = choose_version(dataclasses.replace(snapshot, last_start=None), None)
    return choice.version if isinstance(choice, Stay) else None


def serving_version(views: Mapping[int, StageView], n_stages: int) -> str | None:
    """The version to start sessions on without a desired one: one every stage 0..n-1 offers.

    The leaders' version when they agree (the cluster's choice); otherwise the greatest by
    name of the versions every stage offers (deterministic, so every coordinator picks the
    same); None while no version is offered by every stage.
    """
    common = offered_by_every_stage(views, n_stages)
    leaders = {
        leader.model_version
        for k in range(n_stages)
        if k in views and (leader := views[k].leader) is not None
    }
    if len(leaders) == 1 and leaders <= common:
        return next(iter(leaders))
    return max(common) if common else None


def offered_by_every_stage(views: Mapping[int, StageView], n_stages: int) -> frozenset[str]:
    """The versions every stage 0..n-1 has a replica of."""
    per_stage = [
        {r.model_version for r in views[k].replicas.values()} if k in views else set()
        for k in range(n_stages)
    ]
    return frozenset(set.intersection(*per_stage)) if per_stage else frozenset()
