"""`actionmesh bench --failover`: kill the middle stage's leader again and again under load."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import grpc
import torch

from chaos.fleet import SteppingRobot
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc
from service.runtime.command_settings import BenchSettings
from state.backends import open_routing_table
from state.leadership import ReplicaInfo, RoutingTable

CONTROL_PERIOD_S = 0.02
STEADY_S = 1.0  # between kills, and the window of "latency around a kill" on each side
MAX_STEPS = 100_000


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench --failover: not within {timeout_s}s: {what}")
        time.sleep(0.01)


def _leader(table: RoutingTable, stage: int) -> ReplicaInfo | None:
    view = table.snapshot().get(stage)
    return view.leader if view is not None else None


def _first_full_after(robots: list[SteppingRobot], t: float) -> float | None:
    """From t to the first FULL answer to a step sent after t (so it met the fault)."""
    times = [
        o.at
        for r in robots
        for o in list(r.outcomes)
        if o.code == "OK" and o.serve_mode == session_pb2.SERVE_MODE_FULL and o.at - o.latency_s > t
    ]
    return min(times) - t if times else None


def _time_to_full(robots: list[SteppingRobot], killed_at: float) -> float:
    _wait_for(lambda: _first_full_after(robots, killed_at) is not None, 30, "a FULL answer")
    took = _first_full_after(robots, killed_at)
    assert took is not None
    return took


def run(settings: BenchSettings) -> dict[str, object]:
    settings = settings.model_copy(update={"replicas": max(2, settings.replicas)})
    with LocalCluster(settings) as cluster, grpc.insecure_channel(cluster.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        gen = torch.Generator().manual_seed(settings.seed)
        obs = [torch.randn(cluster.model.observation_dim, generator=gen) for _ in range(MAX_STEPS)]
        robots = [
            SteppingRobot(stub, obs, CONTROL_PERIOD_S) for _ in range(settings.failover_robots)
        ]
        table = open_routing_table(cluster.etcd_url, settings.cluster)
        table.start()
        middle = cluster.model.n_stages // 2
        kills: list[float] = []
        failovers: list[float] = []
        try:
            for robot in robots:
                robot.start()
            time.sleep(STEADY_S)
            for i in range(settings.failover_kills):
                _wait_for(
                    lambda: _leader(table, middle) is not None, 30, f"a leader of stage {middle}"
                )
                leader = _leader(table, middle)
                assert leader is not None
                killed_at = time.monotonic()
                cluster.replica_process(leader.replica_id).kill()
                kills.append(killed_at)
                took = _time_to_full(robots, killed_at)
                failovers.append(took)
                print(
                    f"kill {i + 1}/{settings.failover_kills}: {leader.replica_id}, next FULL answer after {took * 1e3:.0f} ms",
                    file=sys.stderr,
                )
                cluster.restart_replica(leader.replica_id)
                _wait_for(
                    lambda: len(table.snapshot()[middle].replicas) == settings.replicas,
                    30,
                    "the killed replica registered again",
                )
                time.sleep(STEADY_S)
        finally:
            for robot in robots:
                robot.stop()
            for robot in robots:
                robot.join(timeout=10)
            table.stop()
    outcomes = [o for r in robots for o in r.outcomes]
    around = [o.latency_s for o in outcomes if any(abs(o.at - k) <= STEADY_S for k in kills)]
    return {
        "kills": len(kills),
        "robots": len(robots),
        "failover_p50_s": round(statistics.median(failovers), 4),
        "failover_max_s": round(max(failovers), 4),
        "failover_s": [round(f, 4) for f in failovers],
        "latency_around_kill_p50_ms": round(percentile_ms(around, 50), 2),
        "latency_around_kill_max_ms": round(max(around, default=0.0) * 1e3, 2),
        "steps_ok": sum(o.code == "OK" for o in outcomes),
        "steps_failed": sum(o.code != "OK" for o in outcomes),
    }


def print_table(result: dict[str, object]) -> None:
    print(
        f"{result['kills']} kills of the middle stage's leader, {result['robots']} robots at 50 Hz\n"
        f"time to the next FULL answer: p50 {result['failover_p50_s']} s, max {result['failover_max_s']} s\n"
        f"step latency within {STEADY_S:.0f} s of a kill: p50 {result['latency_around_kill_p50_ms']} ms, "
        f"max {result['latency_around_kill_max_ms']} ms\n"
        f"steps: {result['steps_ok']} answered, {result['steps_failed']} failed (retried with the same seq)"
    )
