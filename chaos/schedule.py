"""The scenarios and their fault schedules: which faults a run injects, when, for how long and
on which target, as a pure function of (scenario, duration, seed), so that a run can be
repeated exactly and a failing seed handed to someone else."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

# Every fault the suite can inject, with what it does (the scenario of the same name).
FAULTS: dict[str, str] = {
    "kill-leader": "kill -9 a stage leader, restart it after the hold",
    "pause-leader": "SIGSTOP a stage leader for the hold, then SIGCONT",
    "kill-coordinator": "kill -9 the coordinator the robots use, restart it after the hold",
    "kill-redis-primary": "kill -9 the Redis primary (Sentinel promotes the replica), restart it "
    "as a replica after the hold",
    "kill-etcd-member": "kill -9 an etcd member that is not the leader, restart it after the hold",
    "kill-etcd-leader": "kill -9 the etcd raft leader, restart it after the hold",
    "etcd-quorum-loss": "kill -9 two of the three etcd members for the hold (serving goes on from "
    "the last routing table), then restart them",
    "corrupt-checkpoint": "corrupt a shard's flash copy of the served version, restart the shard: "
    "it must quarantine the file and load a good copy",
    "rolling-update": "promote a second model version under load, roll back after the hold",
    "slow-link": "delay every chunk between the robots and their coordinator by 150-450 ms (a "
    "proxy of the suite's own) for the hold",
    "partition-shard": "drop every packet between a stage leader's host and the coordinators' "
    "hosts (nftables, network namespaces) for the hold",
    "partition-redis": "drop every packet between the robots' coordinator's host and Redis and "
    "its Sentinels (nftables, network namespaces) for the hold",
}

MIXED = "mixed"
# Scenarios whose robots reach the coordinators through delay proxies (chaos/delay_proxy.py).
PROXIED = ("slow-link", MIXED)
# Scenarios whose every shard, coordinator and the rest each run on a host of their own (a
# network namespace: chaos/hosts.py), so that nftables can cut the links between them.
PARTITIONS = ("partition-shard", "partition-redis")
# Faults `mixed` draws from: all but the partitions (mixed runs on loopback, where the
# machine need not allow namespaces).
MIXED_FAULTS = tuple(f for f in FAULTS if f not in PARTITIONS)


@dataclass(frozen=True)
class FaultEvent:
    """One planned fault: `at_s` after the robots start, held `hold_s`; `pick` chooses the
    target among the candidates at the time (a stage, an etcd member), modulo their count."""

    at_s: float
    fault: str
    hold_s: float
    pick: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def scenario_names() -> list[str]:
    return [*FAULTS, MIXED]


def describe(name: str) -> str:
    if name == MIXED:
        return (
            "one fault every --every-s seconds, each drawn by the seed from all the others but "
            "the partitions"
        )
    return FAULTS[name]


# How long each fault is held (seconds), drawn within these bounds.
HOLD_S: dict[str, tuple[float, float]] = {
    "kill-leader": (1.0, 3.0),
    "pause-leader": (2.0, 4.0),
    "kill-coordinator": (1.0, 3.0),
    "kill-redis-primary": (2.0, 3.0),
    "kill-etcd-member": (1.0, 3.0),
    "kill-etcd-leader": (1.0, 3.0),
    "etcd-quorum-loss": (3.0, 5.0),
    "corrupt-checkpoint": (0.0, 0.0),
    "rolling-update": (3.0, 5.0),
    "slow-link": (2.0, 4.0),
    "partition-shard": (3.0, 5.0),
    "partition-redis": (3.0, 5.0),
}


def schedule(name: str, duration_s: float, seed: int, every_s: float = 10.0) -> list[FaultEvent]:
    """The faults of one run. A single-fault scenario injects its fault once, between a quarter
    and 40 % of the run (the robots have settled; the rest of the run shows the recovery);
    `mixed` injects one fault every `every_s` from `every_s` on, while a fault still fits."""
    if name not in FAULTS and name != MIXED:
        raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(scenario_names())}")
    if duration_s <= 0 or every_s <= 0:
        raise ValueError("duration_s and every_s must be positive")
    rng = random.Random(f"{name}/{seed}")  # str seeds hash deterministically (not per process)
    if name != MIXED:
        at = round(duration_s * rng.uniform(0.25, 0.4), 3)
        return [_event(rng, name, at)]
    events, at = [], every_s
    while at < duration_s * 0.8:
        events.append(_event(rng, rng.choice(MIXED_FAULTS), round(at, 3)))
        at += every_s
    return events


def _event(rng: random.Random, fault: str, at_s: float) -> FaultEvent:
    low, high = HOLD_S[fault]
    return FaultEvent(at_s, fault, round(rng.uniform(low, high), 3), rng.randrange(1 << 16))
