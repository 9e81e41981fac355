"""A shard that cannot load the desired version (a full flash, a missing blob) keeps serving,
and tries again after a backoff that doubles up to a cap, each retry counted."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from checkpoint.errors import NoSpace
from service.shard import version_follower
from service.shard.stage_runtime import StageRuntime
from service.shard.version_follower import (
    RETRY_FAILED_S,
    RETRY_JITTER,
    RETRY_MAX_S,
    VersionFollower,
    retry_after_s,
)
from state.leadership import ReplicaInfo, Role, StageView

STAGE = 7  # a stage no other test's counters touch


def test_the_wait_doubles_per_failure_up_to_the_cap_within_the_jitter() -> None:
    for failures, base in [(1, RETRY_FAILED_S), (2, 2 * RETRY_FAILED_S), (3, 4 * RETRY_FAILED_S)]:
        waits = [retry_after_s(failures) for _ in range(200)]
        assert base * (1 - RETRY_JITTER) <= min(waits) < max(waits) <= base * (1 + RETRY_JITTER)
    assert max(retry_after_s(30) for _ in range(200)) <= RETRY_MAX_S * (1 + RETRY_JITTER)


class Membership:
    def __init__(self) -> None:
        self.info = ReplicaInfo(STAGE, "me", "h:1", "v1")
        self.role = Role.STANDBY

    def announce(self, info: ReplicaInfo) -> None:
        self.info = info


class Table:
    def desired_version(self) -> str:
        return "v2"

    def snapshot(self) -> dict[int, StageView]:
        return {}


class Servicer:
    def __init__(self) -> None:
        self.swapped: list[str] = []

    def swap(self, stage: StageRuntime, version: str, retire_after_s: float) -> None:
        self.swapped.append(version)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failed_load_is_retried_after_its_backoff_counted_until_it_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(version_follower.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(version_follower, "retry_after_s", lambda failures: 10.0 * failures)
    attempts: list[str] = []

    def load(version: str) -> StageRuntime:
        attempts.append(version)
        if len(attempts) <= 2:
            raise NoSpace("no space on local flash /flash for version=v2")
        return cast(StageRuntime, object())

    membership, servicer = Membership(), Servicer()
    follower = VersionFollower(
        cast(Any, Table()), cast(Any, membership), cast(Any, servicer), load, n_stages=3
    )
    before = {
        outcome: counted("actionmesh_shard_reloads_total", stage=str(STAGE), outcome=outcome)
        for outcome in ("failed", "loaded")
    }
    retries_before = counted("actionmesh_shard_reload_retries_total", stage=str(STAGE))
    follower._follow_once()  # fails: next try in 10 s
    now[0] += 9.0
    follower._follow_once()  # too soon
    assert (attempts, membership.info.model_version) == (["v2"], "v1")
    now[0] += 1.0
    follower._follow_once()  # fails again: next try in 20 s
    now[0] += 19.0
    follower._follow_once()
    assert len(attempts) == 2
    now[0] += 1.0
    follower._follow_once()  # loads
    assert (len(attempts), servicer.swapped) == (3, ["v2"])
    assert membership.info == dataclasses.replace(Membership().info, model_version="v2")
    after = {
        outcome: counted("actionmesh_shard_reloads_total", stage=str(STAGE), outcome=outcome)
        for outcome in ("failed", "loaded")
    }
    assert (after["failed"] - before["failed"], after["loaded"] - before["loaded"]) == (2, 1)
    retries = counted("actionmesh_shard_reload_retries_total", stage=str(STAGE))
    assert retries - retries_before == 2
