"""Degraded modes on a real cluster: a stage dies with no standby, robots keep getting
labelled answers within their deadlines, and go back to FULL with level states."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from chaos.fleet import Robot, SteppingRobot
from chaos.invariants import (
    MAX_STEPS,
    PERIOD_S,
    check_nothing_lost_or_doubled,
    failed,
    failure_report,
    progress,
    robots_stepping,
)
from chaos.reference import observations
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from service.proto import session_pb2, session_pb2_grpc
from state.backends import open_routing_table
from state.leadership import RoutingTable
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.waiting import wait_for

FULL, EARLY_EXIT, FALLBACK = (
    session_pb2.SERVE_MODE_FULL,
    session_pb2.SERVE_MODE_EARLY_EXIT,
    session_pb2.SERVE_MODE_FALLBACK,
)
# A log that reaches back to the outage's start, so that replay brings the lagging stages level.
LONG_LOG = {"observation_log_depth": 2000}


def latest_mode(robots: list[Robot]) -> set[int]:
    return {next(o.serve_mode for o in reversed(r.outcomes) if o.code == "OK") for r in robots}


def check_answers(
    cluster: LocalCluster, robots: list[Robot], model: ActionModel, exit_stage: int
) -> None:
    """Every step answered once, labelled; FULL and EARLY_EXIT answers equal the reference
    of a session that never failed (the lagging stages were replayed level); every early exit
    at `exit_stage`; the stored states are level at the end."""
    with grpc.insecure_channel(cluster.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        infos = [  # read first: computing the references below may outlast a session's TTL
            stub.GetSession(session_pb2.GetSessionRequest(session_id=r.session_id), timeout=5)
            for r in robots
        ]
        check_nothing_lost_or_doubled(cluster, stub, robots, degraded=True)
    for robot, info in zip(robots, infos, strict=True):
        exits = {
            o.exit_stage for o in robot.outcomes if o.code == "OK" and o.serve_mode == EARLY_EXIT
        }
        assert exits <= {exit_stage}, f"session {robot.session_id}: early exits at {exits}"
        assert info.seq == robot.acked
        assert [s.seq for s in info.stage_states] == [info.seq] * model.cfg.n_stages


def stage_gone(table: RoutingTable, stage: int) -> bool:
    """Its only replica's lease expired: no version is offered by every stage."""
    view = table.snapshot().get(stage)
    return view is None or not view.replicas


def through_an_outage(cluster: LocalCluster, replica_id: str, degraded_mode: int) -> list[Robot]:
    """Robots step while `replica_id` (the only replica of its stage) is killed and later
    restarted: answered `degraded_mode` meanwhile, FULL again after, no step failed. One more
    robot opens its session mid-outage (no version is whole then) and is served the same way."""
    stage = int(replica_id.split("-")[1])  # stage-K-rR
    table = open_routing_table(cluster.etcd_url, cluster.settings.cluster)
    table.start()
    with (
        grpc.insecure_channel(cluster.address) as channel,
        robots_stepping(cluster, check=False) as robots,
    ):
        progress(robots, 10)
        cluster.replica_process(replica_id).kill()
        wait_for(lambda: stage_gone(table, stage), 30, f"stage {stage} gone from etcd")
        progress(robots, 10)
        late = SteppingRobot(
            session_pb2_grpc.SessionServiceStub(channel),
            observations(len(robots), MAX_STEPS, cluster.model.observation_dim),
            PERIOD_S,
        )
        robots.append(late)  # stopped with the others
        late.start()
        progress(robots, 10)
        assert latest_mode(robots) == {degraded_mode}
        cluster.restart_replica(replica_id)
        wait_for(lambda: latest_mode(robots) == {FULL}, 30, "every session back to FULL")
        progress(robots, 10)
    table.stop()
    assert failed(robots) == [], failure_report(robots, cluster.log_dir)
    modes = {o.serve_mode for r in robots for o in r.outcomes}
    assert modes == {FULL, degraded_mode}, "every answer labelled, and only these two ways"
    return robots


def test_last_stage_dies_answers_come_from_the_exit_head_then_full_again(tmp_path: Path) -> None:
    with LocalCluster(
        cluster_settings(tmp_path, replicas=1), SMALL_MODEL, coordinator_overrides=LONG_LOG
    ) as cluster:
        model, _ = weights.load_model(cluster.weights_dir)
        robots = through_an_outage(cluster, "stage-2-r0", EARLY_EXIT)
        degraded = [o for r in robots for o in r.outcomes if o.serve_mode == EARLY_EXIT]
        assert all(o.confidence == 0.0 for o in degraded)  # untrained weights: unmeasured
        check_answers(cluster, robots, model, exit_stage=1)


def test_middle_stage_dies_the_policy_picks_the_student_over_a_poor_exit_head(
    tmp_path: Path,
) -> None:
    work = tmp_path / "cluster"
    weights.save(ActionModel(SMALL_MODEL), work / "weights")
    quality = {
        "full": {"error": 0.01, "success": 0.9, "p50_ms": 5.0},
        "early_exit_0": {"error": 0.05, "success": 0.2, "p50_ms": 2.0},  # 5x: below the bar
        "early_exit_1": {"error": 0.012, "success": 0.85, "p50_ms": 4.0},
        "fallback": {"error": 0.014, "success": 0.8, "p50_ms": 1.0},
        "state_lost": {"error": 0.04, "success": 0.3, "p50_ms": 5.0},
    }
    (work / "weights" / weights.QUALITY_FILE).write_text(json.dumps({"modes": quality}))
    with LocalCluster(
        cluster_settings(work, replicas=1), SMALL_MODEL, coordinator_overrides=LONG_LOG
    ) as cluster:
        model, _ = weights.load_model(cluster.weights_dir)
        robots = through_an_outage(cluster, "stage-1-r0", FALLBACK)
        fallback = [o for r in robots for o in r.outcomes if o.serve_mode == FALLBACK]
        assert all(o.confidence == pytest.approx(0.01 / 0.014) for o in fallback)
        check_answers(cluster, robots, model, exit_stage=0)
