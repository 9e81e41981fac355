"""Stage leaders die, hang and leave while robots step: the steps go on, none lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from chaos.faults import stage_leader as leader_of
from chaos.fleet import Robot
from chaos.invariants import (
    check_failures_at,
    check_nothing_lost_or_doubled,
    failed,
    failure_report,
    progress,
    robots_stepping,
    worst_step_latency_after,
)
from service.local.embedded_etcd import EmbeddedEtcdCluster
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from service.proto import session_pb2, session_pb2_grpc, stage_pb2, stage_pb2_grpc
from state.leadership import ReplicaInfo
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.scraping import scrape
from tests.support.waiting import wait_for

TTL_S = 2.0


def led_by_another(cluster: LocalCluster, stage: int, old: ReplicaInfo) -> bool:
    lead = leader_of(cluster, stage)
    return lead is not None and lead.replica_id != old.replica_id


def replica_role(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        info = stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=2)
        return str(info.role)


def check_failover(robots: list[Robot], fault_at: float, what: str) -> None:
    """What a leader's failure may cost the robots stepping through it: at most one failed
    attempt per robot, sent within 1 s after the fault, and no step (retries included) waiting
    as long as the lease TTL: the coordinator moves to the standby on a failed or late stage
    call, it does not wait for etcd to elect one. The bound is generous on purpose (the machine
    is shared and noisy). The answers themselves are checked against the in-process reference
    when robots_stepping ends."""
    worst = worst_step_latency_after(robots, fault_at)
    print(f"{what}: slowest step after it {worst * 1e3:.0f} ms; failed steps {failed(robots)}")
    check_failures_at(robots, fault_at, window_s=1.0, per_robot=1)
    assert worst < TTL_S, f"{what}: a step waited {worst:.2f} s, not less than the lease TTL"


def test_kill_9_of_a_stage_leader(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster, robots_stepping(cluster) as robots:
        progress(robots, 20)
        old = leader_of(cluster, 1)
        assert old is not None
        killed_at = time.monotonic()
        cluster.replica_process(old.replica_id).kill()
        took = wait_for(
            lambda: led_by_another(cluster, 1, old),
            TTL_S + 3,
            "a standby leads stage 1",
        )
        progress(robots, 20)
        print(f"kill -9: new leader in etcd after {took:.2f} s")
        check_failover(robots, killed_at, "kill -9")


def test_hung_leader_is_suspected_and_later_serves_as_standby(tmp_path: Path) -> None:
    """The steps go to the standby as soon as the hung leader is suspected (a stage call past
    stage_timeout_s), long before its lease runs out: check_failover bounds every step by the
    lease TTL."""
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster, robots_stepping(cluster) as robots:
        progress(robots, 20)
        old = leader_of(cluster, 2)
        assert old is not None
        pid = cluster.replica_process(old.replica_id).pid
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            progress(robots, 20)  # steps go on, on the standby, long before the lease runs out
            wait_for(
                lambda: led_by_another(cluster, 2, old),
                TTL_S + 3,
                "the standby takes the lease of the hung leader",
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(
            lambda: replica_role(old.address) == "standby", 10, "the old leader serves as standby"
        )
        new = leader_of(cluster, 2)
        assert new is not None and new.replica_id != old.replica_id
        progress(robots, 20)
        check_failover(robots, stopped_at, "SIGSTOP")


def test_graceful_leader_shutdown_fails_no_step(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster, robots_stepping(cluster) as robots:
        progress(robots, 20)
        old = leader_of(cluster, 0)
        assert old is not None
        cluster.replica_process(old.replica_id).stop()
        wait_for(
            lambda: led_by_another(cluster, 0, old),
            1.0,
            "a standby leads stage 0 at once (the lease was revoked)",
        )
        progress(robots, 20)
        assert failed(robots) == [], failure_report(robots, cluster.log_dir)


def test_etcd_member_kill_fails_no_step(tmp_path: Path) -> None:
    with EmbeddedEtcdCluster(3, tmp_path / "etcd") as etcd:
        settings = cluster_settings(
            tmp_path / "cluster", replicas=2, lease_ttl_s=TTL_S, etcd=etcd.url
        )
        with (
            LocalCluster(settings, model=SMALL_MODEL) as cluster,
            robots_stepping(cluster) as robots,
        ):
            progress(robots, 20)
            etcd.leader_member().kill()
            progress(robots, 50)
            assert failed(robots) == [], failure_report(robots, cluster.log_dir)


def version_refusals(port: int, stage: int) -> float:
    """A shard's count of Forward calls it refused for asking a model version it does not serve."""
    refusals = scrape(port).value("actionmesh_shard_version_refusals_total", stage=str(stage))
    assert refusals is not None, f"the stage {stage} shard does not expose its version refusals"
    return refusals


def test_replicas_of_two_versions_are_never_mixed(tmp_path: Path) -> None:
    """Stage 1 is left with a replica of another version only: the coordinator never asks it
    for a step of the sessions' version (a shard refuses such a call, and counts it), and
    answers from stage 0's exit head instead."""
    settings = cluster_settings(tmp_path, replicas=1, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster:
        model, v1 = weights.load_model(cluster.weights_dir)
        other = weights.save(
            ActionModel(SMALL_MODEL.model_copy(update={"seed": 1})), tmp_path / "weights-v2"
        )
        extra = [
            cluster.start_shard(k, 1, tmp_path / "weights-v2") for k in range(SMALL_MODEL.n_stages)
        ]
        cluster.shards.extend(extra)
        for shard in extra:
            shard.wait_ready(60)
        v1_shards = [cluster.replica_process(f"stage-{k}-r0") for k in range(SMALL_MODEL.n_stages)]
        with grpc.insecure_channel(cluster.address) as channel:
            with robots_stepping(cluster, check=False) as robots:
                progress(robots, 10)
                victim = v1_shards[1]
                refused_by_victim = version_refusals(victim.ports["metrics_port"], 1)
                killed_at = time.monotonic()
                victim.kill()  # stage 1 is left with a v2 replica only
                dead_at = time.monotonic()  # kill() returns once the process is reaped
                wait_for(
                    lambda: all(
                        r.outcomes[-1].serve_mode == session_pb2.SERVE_MODE_EARLY_EXIT
                        for r in robots
                    ),
                    10,
                    "steps are answered from stage 0's exit head rather than mix versions",
                )
                progress(robots, 20)
            # Every answer is v1's: FULL before the kill, stage 0's exit head after it (stages
            # 1 and 2 lag; bringing them level would need a v1 stage 1).
            check_nothing_lost_or_doubled(
                cluster,
                session_pb2_grpc.SessionServiceStub(channel),
                robots,
                {v1.version: model},
                degraded=True,
            )
        for robot in robots:
            after = {
                (o.serve_mode, o.exit_stage)
                for o in robot.outcomes
                if o.code == "OK" and o.at - o.latency_s > dead_at
            }
            assert after == {(session_pb2.SERVE_MODE_EARLY_EXIT, 0)}, (
                f"session {robot.session_id}: answers after the kill (mode, exit stage) {after}"
            )
        # No replica was ever asked for a version it does not serve (the v1 leader of stage 1
        # read just before its kill; after it, nothing reaches it).
        refusals = {"stage-1-r0": refused_by_victim}
        for k in range(SMALL_MODEL.n_stages):
            for r, shard in enumerate((v1_shards[k], extra[k])):
                if shard is not victim:
                    refusals[f"stage-{k}-r{r}"] = version_refusals(shard.ports["metrics_port"], k)
        assert refusals == dict.fromkeys(refusals, 0.0), (
            f"a replica was asked for a version it does not serve, refusals by replica: {refusals}"
        )
        for shard in extra:
            with grpc.insecure_channel(f"127.0.0.1:{shard.ports['grpc_port']}") as info_channel:
                info = stage_pb2_grpc.StageServiceStub(info_channel).Info(
                    stage_pb2.InfoRequest(), timeout=5
                )
            assert info.model_version == other.version
            assert info.forward_items_total == 0, "a v2 replica computed a step of v1 sessions"
        # The kill costs at most the steps in flight at it: one per robot, retried at once.
        check_failures_at(robots, killed_at, window_s=1.0, per_robot=1)


def status_json(cluster: LocalCluster) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "status",
            "--etcd",
            cluster.etcd_url,
            "--cluster",
            cluster.settings.cluster,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def test_status_shows_leaders_and_standbys_with_health(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster:
        status = status_json(cluster)
        assert [s["stage"] for s in status["stages"]] == [0, 1, 2]
        version = status["stages"][0]["leader"]["model_version"]
        for stage in status["stages"]:
            assert stage["leader"]["health"] == "SERVING"
            assert [r["health"] for r in stage["standbys"]] == ["SERVING"]
            ids = {stage["leader"]["replica_id"], stage["standbys"][0]["replica_id"]}
            assert ids == {f"stage-{stage['stage']}-r0", f"stage-{stage['stage']}-r1"}
            assert {stage["leader"]["model_version"], stage["standbys"][0]["model_version"]} == {
                version
            }
        standby = status["stages"][1]["standbys"][0]
        cluster.replica_process(standby["replica_id"]).kill()
        wait_for(
            lambda: status_json(cluster)["stages"][1]["standbys"] == [],
            TTL_S + 5,
            "a dead standby leaves the status once its lease expires",
        )


def test_etcd_outage_keeps_routing_on_the_last_table(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, replicas=2, lease_ttl_s=TTL_S)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster, robots_stepping(cluster) as robots:
        assert cluster.etcd is not None and cluster.coordinator is not None
        port = cluster.coordinator.ports["metrics_port"]

        def connected() -> float | None:
            return scrape(port).value("actionmesh_etcd_connected", client="routing_table")

        progress(robots, 10)
        cluster.etcd.kill()
        wait_for(lambda: connected() == 0.0, 15, "coordinator sees etcd gone")
        progress(robots, 30)
        cluster.etcd.restart()
        wait_for(lambda: connected() == 1.0, 30, "coordinator reconnects")
        old = leader_of(cluster, 1)
        assert old is not None
        cluster.replica_process(old.replica_id).stop()  # a change after the restart is seen
        wait_for(
            lambda: led_by_another(cluster, 1, old),
            TTL_S + 3,
            "a standby leads stage 1",
        )
        progress(robots, 20)
        assert failed(robots) == [], failure_report(robots, cluster.log_dir)
