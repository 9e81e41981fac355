"""A stage leader paused (SIGSTOP) under robots on the client library (unary or streaming):
it costs a robot at most one step deadline, whatever the client's deadline, never a run of
failed steps until the leader's lease runs out."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from actionmesh_client.session_client import ActionMeshClient
from chaos.faults import stage_leader as leader_of
from chaos.invariants import (
    failed,
    failure_report,
    progress,
    robots_stepping,
    worst_step_latency_after,
)
from service.local.local_cluster import LocalCluster
from tests.conftest import SMALL_MODEL, cluster_settings

# Longer than the pause: what the robots see is the coordinator's doing, not etcd electing
# the standby when the paused leader's lease runs out.
LEASE_TTL_S = 10.0
PAUSE_S = 3.0
CLIENT_DEADLINE_S = 0.5  # the client library's default per-attempt deadline
assert ActionMeshClient.__init__.__kwdefaults__["step_timeout_s"] == CLIENT_DEADLINE_S


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
def test_a_paused_stage_leader_costs_robots_at_most_one_step_deadline(
    tmp_path: Path, streaming: bool
) -> None:
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=LEASE_TTL_S)
    with (
        LocalCluster(settings, model=SMALL_MODEL) as cluster,
        robots_stepping(cluster, client_library=True, streaming=streaming, degraded=True) as robots,
    ):
        progress(robots, 20)
        leader = leader_of(cluster, 0)
        assert leader is not None
        pid = cluster.replica_process(leader.replica_id).pid
        os.kill(pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            time.sleep(PAUSE_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        progress(robots, 20)
        worst = worst_step_latency_after(robots, paused_at)
        print(f"SIGSTOP {PAUSE_S} s: slowest step {worst * 1e3:.0f} ms; failed {failed(robots)}")
        # Every attempt counts (the robots' clients make one attempt each): none may fail.
        assert failed(robots) == [], "a step failed while a stage leader was paused:\n" + (
            failure_report(robots, cluster.log_dir)
        )
        # Generous (a shared, noisy machine): twice the client's deadline.
        assert worst < 2 * CLIENT_DEADLINE_S, f"a robot waited {worst:.2f} s for an action"
