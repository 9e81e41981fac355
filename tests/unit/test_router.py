"""Route choice and bans as pure functions: table-driven, no servers, no clocks."""

from __future__ import annotations

import pytest

from service.coordinator.routing.replica_choice import (
    Ban,
    BanPolicy,
    candidates,
    is_banned,
)
from service.coordinator.routing.version_choice import serving_version
from state.leadership import ReplicaInfo, StageView


def replica(rid: str, version: str = "v1", stage: int = 0) -> ReplicaInfo:
    return ReplicaInfo(stage, rid, f"127.0.0.1:{1000 + sum(map(ord, rid))}", version)


def view(
    leader: str | None, *others: ReplicaInfo, stage: int = 0, version: str = "v1"
) -> StageView:
    reps = {r.replica_id: r for r in others}
    lead = None
    if leader is not None:
        lead = reps.get(leader) or replica(leader, version, stage)
        reps[leader] = lead
    return StageView(stage, lead, reps)


def ids(rs: list[ReplicaInfo]) -> list[str]:
    return [r.replica_id for r in rs]


def test_leader_first_then_standbys_by_id() -> None:
    v = view("b", replica("c"), replica("a"), replica("b"))
    assert ids(candidates(v, "v1", {}, now=0.0, tried=frozenset())) == ["b", "a", "c"]


def test_no_leader_means_standbys_by_id() -> None:
    v = view(None, replica("c"), replica("a"))
    assert ids(candidates(v, "v1", {}, now=0.0, tried=frozenset())) == ["a", "c"]


def test_other_versions_are_never_candidates() -> None:
    v = view("a", replica("a", "v2"), replica("b", "v1"), replica("c", "v2"))
    assert ids(candidates(v, "v1", {}, now=0.0, tried=frozenset())) == ["b"]
    assert ids(candidates(v, "v2", {}, now=0.0, tried=frozenset())) == ["a", "c"]
    assert candidates(v, "v3", {}, now=0.0, tried=frozenset()) == []


def test_tried_replicas_are_skipped() -> None:
    v = view("a", replica("a"), replica("b"))
    assert ids(candidates(v, "v1", {}, now=0.0, tried=frozenset({"a"}))) == ["b"]
    assert candidates(v, "v1", {}, now=0.0, tried=frozenset({"a", "b"})) == []


@pytest.mark.parametrize(
    ("bans", "now", "expected"),
    [
        ({}, 10.0, ["a", "b", "c"]),
        ({"a": Ban(1, until=11.0)}, 10.0, ["b", "c", "a"]),  # banned leader goes last
        ({"a": Ban(1, until=9.0)}, 10.0, ["a", "b", "c"]),  # an expired ban is no ban
        ({"a": Ban(3, until=20.0), "b": Ban(1, until=12.0)}, 10.0, ["c", "b", "a"]),
    ],
)
def test_banned_replicas_go_last_soonest_released_first(
    bans: dict[str, Ban], now: float, expected: list[str]
) -> None:
    v = view("a", replica("a"), replica("b"), replica("c"))
    assert ids(candidates(v, "v1", bans, now=now, tried=frozenset())) == expected


def test_ban_doubles_per_failure_up_to_the_cap_and_expires() -> None:
    policy = BanPolicy(base_s=0.5, max_s=3.0)
    lengths, ban = [], None
    for _ in range(5):
        ban = policy.after_failure(ban, now=100.0)
        lengths.append(ban.until - 100.0)
    assert lengths == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert ban is not None and ban.failures == 5
    x, y = ReplicaInfo(0, "x", "h:1", "v"), ReplicaInfo(0, "y", "h:2", "v")
    assert is_banned(x, {"x": ban}, now=102.9)
    assert not is_banned(x, {"x": ban}, now=103.0)
    assert not is_banned(y, {"x": ban}, now=0.0)
    reborn = ReplicaInfo(0, "x", "h:1", "v", lease_id=7)  # back with a new lease: clean
    assert not is_banned(reborn, {"x": ban}, now=102.9)
    assert policy.after_failure(ban, now=102.9, epoch=7).failures == 1


def _views(*stages: tuple[str | None, list[ReplicaInfo]]) -> dict[int, StageView]:
    out = {}
    for k, (leader, reps) in enumerate(stages):
        reps = [ReplicaInfo(k, r.replica_id, r.address, r.model_version) for r in reps]
        by_id = {r.replica_id: r for r in reps}
        out[k] = StageView(k, by_id.get(leader) if leader else None, by_id)
    return out


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        # every leader on v1: v1
        ([("a", [replica("a", "v1")]), ("b", [replica("b", "v1")])], "v1"),
        # leaders disagree, but every stage offers v1: the common one
        (
            [("a", [replica("a", "v2"), replica("x", "v1")]), ("b", [replica("b", "v1")])],
            "v1",
        ),
        # leaders agree on v2 but stage 1 has no v2 replica left: the common v1
        (
            [("a", [replica("a", "v2"), replica("x", "v1")]), (None, [replica("b", "v1")])],
            "v1",
        ),
        # two common versions, leaders split: the greatest by name
        (
            [
                ("a", [replica("a", "v1"), replica("x", "v2")]),
                ("b", [replica("b", "v2"), replica("y", "v1")]),
            ],
            "v2",
        ),
        # no version covers every stage
        ([("a", [replica("a", "v1")]), ("b", [replica("b", "v2")])], None),
        # a stage missing entirely
        ([("a", [replica("a", "v1")])], None),
    ],
)
def test_serving_version(
    stages: list[tuple[str | None, list[ReplicaInfo]]], expected: str | None
) -> None:
    assert serving_version(_views(*stages), n_stages=2) == expected


def test_ban_length_never_overflows_after_very_many_failures() -> None:
    policy = BanPolicy(base_s=0.5, max_s=30.0)
    ban = Ban(5000, until=0.0)
    assert policy.after_failure(ban, now=10.0) == Ban(5001, until=40.0)


def test_a_restarted_replica_is_reached_at_its_new_address_not_its_stale_leader_key() -> None:
    stale = ReplicaInfo(1, "stage-1-r0", "h:old", "v1", lease_id=1)
    reborn = ReplicaInfo(1, "stage-1-r0", "h:new", "v1", lease_id=2)
    view = StageView(1, leader=stale, replicas={"stage-1-r0": reborn})
    assert candidates(view, "v1", {}, now=0.0, tried=frozenset()) == [reborn]
