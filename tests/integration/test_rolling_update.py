"""Rolling update and rollback of the model version under load: real shards, coordinator,
etcd, Redis and a checkpoint store; the operator uses the CLI as a script would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from chaos.fleet import SteppingRobot
from chaos.invariants import failed, progress, robots_stepping
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from state.etcd_routing import EtcdRoutingTable
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_failover import status_json
from tests.support.waiting import wait_for

ROBOT_PERIOD_S = 0.1  # slow robots keep the observation logs short enough to replay in time


def ckpt(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    assert cluster.checkpoints is not None
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "ckpt",
        *args,
        "--flash-dir",
        str(cluster.checkpoints.flash.root),
        "--remote",
        cluster.checkpoints.remote_url,
        "--trusted-keys",
        str(cluster.checkpoints.public_key),
        "--etcd",
        cluster.etcd_url,
        "--cluster",
        cluster.settings.cluster,
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def serving(robots: list[SteppingRobot], version: str) -> bool:
    """Every robot's latest acknowledged step ran on `version`."""
    latest = [next((o for o in reversed(r.outcomes) if o.code == "OK"), None) for r in robots]
    return all(o is not None and o.model_version == version for o in latest)


def pipeline_on(table: EtcdRoutingTable, version: str) -> bool:
    """Every replica, and so every leader, of every stage announces `version`."""
    views = table.snapshot()
    return len(views) == SMALL_MODEL.n_stages and all(
        view.leader is not None
        and view.leader.model_version == version
        and len(view.replicas) == 2
        and all(r.model_version == version for r in view.replicas.values())
        for view in views.values()
    )


def test_roll_forward_and_back_under_load_without_a_failed_step(tmp_path: Path) -> None:
    # A log as long as the test: every switch replays the whole history, so every answer can
    # be checked against its version's reference run exactly.
    new = ActionModel(SMALL_MODEL.model_copy(update={"seed": 1}))
    weights.save(new, tmp_path / "weights-v2")
    with LocalCluster(
        cluster_settings(tmp_path / "cluster", replicas=2),
        SMALL_MODEL,
        coordinator_overrides={"observation_log_depth": 1000},
    ) as cluster:
        assert cluster.checkpoints is not None
        old_model, old = weights.load_model(cluster.weights_dir)
        v1 = old.version
        v2 = cluster.checkpoints.publish(tmp_path / "weights-v2", promote=False)
        table = EtcdRoutingTable(cluster.etcd_url, cluster.settings.cluster)
        table.start()
        try:
            assert pipeline_on(table, v1)
            models = {v1: old_model, v2: new}
            with robots_stepping(cluster, period_s=ROBOT_PERIOD_S, models=models) as robots:
                progress(robots, 5)
                promoted = ckpt(cluster, "promote", v2)
                assert (promoted["current"], promoted["cluster"]) == (v2, True)
                assert status_json(cluster)["desired_version"] == v2
                wait_for(lambda: serving(robots, v2), 60, f"every session moves to {v2}")
                wait_for(lambda: pipeline_on(table, v2), 60, "every replica and leader on v2")
                progress(robots, 5)

                rolled = ckpt(cluster, "rollback")
                assert (rolled["current"], rolled["previous"], rolled["cluster"]) == (v1, v2, True)
                wait_for(lambda: serving(robots, v1), 60, f"every session back on {v1}")
                wait_for(lambda: pipeline_on(table, v1), 60, "every replica and leader on v1")
                progress(robots, 5)
        finally:
            table.stop()
    assert failed(robots) == []
    for robot in robots:
        versions = [o.model_version for o in robot.outcomes if o.code == "OK"]
        phases = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        assert phases == [v1, v2, v1], "a session switched versions back and forth"
