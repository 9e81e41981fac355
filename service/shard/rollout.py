"""How a replica moves to the cluster's desired model version without a failed step, as a
pure function of the routing view: standbys reload first; a leader hands over to a standby
that already serves the desired version, stage by stage, once every stage offers it.

While this goes on, every stage offers the old version (the leaders) until every stage offers
the new one (the reloaded standbys), so coordinators always have a whole pipeline to route to.
A stage with a single replica has no standby to hand over to: it reloads in place, and its
pipeline is mixed until every such stage has reloaded (steps in that window cannot be served
by the full pipeline: coordinators answer UNAVAILABLE and clients retry).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from state.leadership import ReplicaInfo, StageView


class Move(enum.Enum):
    STAY = "stay"  # on the desired version already, or waiting for others to move first
    RELOAD = "reload"  # load the desired version and announce it
    HAND_OVER = "hand_over"  # leader: step aside for a standby of the desired version, then reload


def next_move(
    me: ReplicaInfo,
    leading: bool,
    desired: str | None,
    views: Mapping[int, StageView],
    n_stages: int,
) -> Move:
    if desired is None or me.model_version == desired:
        return Move.STAY
    if not leading:
        return Move.RELOAD
    own = views.get(me.stage)
    others = [r for r in (own.replicas.values() if own else ()) if r.replica_id != me.replica_id]
    earlier_moved = all(
        (view := views.get(k)) is not None
        and view.leader is not None
        and view.leader.model_version == desired
        for k in range(me.stage)
    )
    if not others:
        return Move.RELOAD
    if not any(r.model_version == desired for r in others):
        return Move.STAY  # a standby is still loading it
    every_stage = all(k in views and views[k].offers(desired) for k in range(n_stages))
    return Move.HAND_OVER if every_stage and earlier_moved else Move.STAY
