"""The pure rules of a rolling update: which replica moves when (which version a step runs
on: tests/unit/test_version_choice.py)."""

from __future__ import annotations

import pytest

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
