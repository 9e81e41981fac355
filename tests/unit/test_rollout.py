"""The pure rules of a rolling update: which replica moves when, and which version a step
runs on."""

from __future__ import annotations

import pytest

from service.coordinator.routing.replica_choice import session_version
from service.shard.rollout import Move, next_move
from state.leadership import ReplicaInfo, StageView

N = 3


def views(spec: dict[int, tuple[str, list[str]]]) -> dict[int, StageView]:
    """Per stage: (leader version, [versions of the other replicas])."""
    out = {}
    for k, (leader_version, others) in spec.items():
        leader = ReplicaInfo(k, f"{k}-lead", f"h:{k}0", leader_version)
        replicas = {leader.replica_id: leader}
        for i, version in enumerate(others):
            replicas[f"{k}-r{i}"] = ReplicaInfo(k, f"{k}-r{i}", f"h:{k}{i + 1}", version)
        out[k] = StageView(k, leader, replicas)
    return out


def leader(stage: int, table: dict[int, StageView]) -> ReplicaInfo:
    found = table[stage].leader
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("spec", "stage", "want"),
    [
        # nothing to do
        ({k: ("v1", ["v1"]) for k in range(N)}, 0, Move.STAY),
        # a standby reloads at once (tested below); the leader waits for it
        ({k: ("v1", ["v1"]) for k in range(N)}, 1, Move.STAY),
        # standbys of stages 0 and 1 are on v2, stage 2's is still loading: leaders wait
        ({0: ("v1", ["v2"]), 1: ("v1", ["v2"]), 2: ("v1", ["v1"])}, 0, Move.STAY),
        # every stage offers v2: stage 0's leader hands over first ...
        ({k: ("v1", ["v2"]) for k in range(N)}, 0, Move.HAND_OVER),
        # ... and stage 1's only once stage 0's leader is on v2
        ({k: ("v1", ["v2"]) for k in range(N)}, 1, Move.STAY),
        ({0: ("v2", ["v1"]), 1: ("v1", ["v2"]), 2: ("v1", ["v2"])}, 1, Move.HAND_OVER),
        # a sole replica has nobody to hand over to: it reloads in place
        ({0: ("v1", []), 1: ("v1", []), 2: ("v1", [])}, 2, Move.RELOAD),
    ],
)
def test_leader_moves(spec: dict[int, tuple[str, list[str]]], stage: int, want: Move) -> None:
    table = views(spec)
    assert next_move(leader(stage, table), True, "v2", table, N) is want


def test_standby_reloads_at_once_and_nobody_moves_without_a_desired_version() -> None:
    table = views({k: ("v1", ["v1"]) for k in range(N)})
    standby = table[1].replicas["1-r0"]
    assert next_move(standby, False, "v2", table, N) is Move.RELOAD
    assert next_move(standby, False, None, table, N) is Move.STAY
    assert next_move(leader(1, table), True, "v1", table, N) is Move.STAY


def usable(version: str) -> bool:
    return version != "bad"


@pytest.mark.parametrize(
    ("spec", "desired", "current", "want"),
    [
        # no rollout: a session stays on its version
        ({k: ("v1", ["v1"]) for k in range(N)}, None, "v1", "v1"),
        # the desired version is not offered by every stage yet: stay
        ({0: ("v1", ["v2"]), 1: ("v1", ["v1"]), 2: ("v1", ["v2"])}, "v2", "v1", "v1"),
        # every stage offers it: move
        ({k: ("v1", ["v2"]) for k in range(N)}, "v2", "v1", "v2"),
        # a desired version whose interface differs is never used
        ({k: ("v1", ["bad"]) for k in range(N)}, "bad", "v1", "v1"),
        # the session's version is partly gone and nothing was asked for: wait (UNAVAILABLE)
        ({0: ("v1", ["v2"]), 1: ("v2", []), 2: ("v1", ["v2"])}, None, "v1", None),
        # the session's version is retired everywhere: move to the whole one
        ({k: ("v2", []) for k in range(N)}, None, "v1", "v2"),
        # a new session takes the desired version when whole, else the serving one
        ({k: ("v1", ["v2"]) for k in range(N)}, "v2", None, "v2"),
        ({0: ("v1", ["v2"]), 1: ("v1", []), 2: ("v1", ["v2"])}, "v2", None, "v1"),
        # nothing whole at all
        ({0: ("v1", []), 1: ("v2", []), 2: ("v1", [])}, None, None, None),
    ],
)
def test_session_version(
    spec: dict[int, tuple[str, list[str]]], desired: str | None, current: str | None, want: str
) -> None:
    assert session_version(views(spec), N, desired, current, usable) == want
