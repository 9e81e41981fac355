"""Several hosts for real: four network namespaces joined by a bridge (one for Redis and etcd,
one per stage shard, one for the coordinator and the robot), every process on its host's
routable address, no loopback between them. Sessions step across them and answer what the
model computes in-process; a shard bound to 0.0.0.0 advertises its host's address, and one
bound to loopback with etcd on another host refuses to start."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from chaos.reference import observations, reference_run
from service.local import netns
from service.local.child_process import ChildProcess
from service.local.embedded_etcd import etcd_binary
from service.local.embedded_redis import redis_server_binary
from service.local.local_cluster import LocalCluster
from service.local.supervised import Supervised
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from tests.conftest import cluster_settings

REPO = Path(__file__).resolve().parents[2]
HOSTS = ["db", "stage0", "stage1", "robot"]
# Two stages on an uneven, explicit split: 1 layer, then 2.
CFG = ModelConfig(
    d_model=64, n_heads=4, n_layers=3, tokens=8, memory_tokens=2, n_stages=2, stage_boundaries=(1,)
)
SESSIONS, STEPS = 2, 30
ATOL = 1e-5

pytestmark = pytest.mark.skipif(
    (reason := netns.unavailable()) is not None, reason=f"no network namespaces here: {reason}"
)


def _wait_tcp(hosts: netns.Hosts, on: str, address: str, port: int, timeout_s: float) -> None:
    """Poll a TCP connect from host `on` (the test process cannot reach these addresses)."""
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (
            subprocess.run(
                hosts.run_in(on, [sys.executable, "-c", probe]), capture_output=True
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{address}:{port} not reachable from {on} within {timeout_s}s")


def _robot(argv_prefix: list[str], target: str) -> dict[str, Any]:
    result = subprocess.run(
        [*argv_prefix, sys.executable, "-m", "tests.support.netns_robot", target,
         "--sessions", str(SESSIONS), "--steps", str(STEPS)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture()
def hosts() -> Iterator[netns.Hosts]:
    with netns.Hosts(HOSTS) as made:
        yield made


def test_sessions_step_across_four_hosts(hosts: netns.Hosts, tmp_path: Path) -> None:
    model = ActionModel(CFG)
    weights.save(model, tmp_path / "weights")
    db, etcd_url = hosts.address["db"], f"etcd://{hosts.address['db']}:2379"
    started: list[Supervised | ChildProcess] = []
    try:
        started.append(
            Supervised(
                "redis",
                hosts.run_in("db", [redis_server_binary(), "--bind", db, "--port", "6379",
                                    "--save", "", "--protected-mode", "no", "--dir", str(tmp_path)]),
                tmp_path / "redis.log",
            )
        )  # fmt: skip
        started.append(
            Supervised(
                "etcd",
                hosts.run_in("db", [etcd_binary(), "--name", "db", "--data-dir", str(tmp_path / "etcd"),
                                    f"--listen-client-urls=http://{db}:2379",
                                    f"--advertise-client-urls=http://{db}:2379",
                                    f"--listen-peer-urls=http://{db}:2380",
                                    f"--initial-advertise-peer-urls=http://{db}:2380",
                                    f"--initial-cluster=db=http://{db}:2380"]),
                tmp_path / "etcd.log",
            )
        )  # fmt: skip
        _wait_tcp(hosts, "robot", db, 6379, 30)
        _wait_tcp(hosts, "robot", db, 2379, 30)

        # Loopback with etcd on another host: refused before loading anything, naming the flag.
        refused = subprocess.run(
            hosts.run_in("stage0", ChildProcess.actionmesh(
                "shard", "--stage", "0", "--host", "127.0.0.1", "--etcd", etcd_url)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2  # a usage error
        assert "--advertise-address" in refused.stderr and "Traceback" not in refused.stderr

        shards = []
        for k in range(CFG.n_stages):
            shard = ChildProcess(
                f"shard-{k}",
                hosts.run_in(f"stage{k}", ChildProcess.actionmesh(
                    "shard", "--stage", str(k), "--host", "0.0.0.0", "--port", "50051",
                    "--etcd", etcd_url, "--weights-dir", str(tmp_path / "weights"))),
                tmp_path,
            ).start()  # fmt: skip
            started.append(shard)
            shards.append(shard)
        for shard in shards:
            shard.wait_ready(120)
        coordinator = ChildProcess(
            "coordinator",
            hosts.run_in("robot", ChildProcess.actionmesh(
                "coordinator", "--host", hosts.address["robot"], "--port", "50050",
                "--etcd", etcd_url, "--redis-url", f"redis://{db}:6379/0")),
            tmp_path,
        ).start()  # fmt: skip
        started.append(coordinator)
        coordinator.wait_ready(120)

        status = subprocess.run(
            hosts.run_in("robot", ChildProcess.actionmesh("status", "--etcd", etcd_url, "--json")),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        leaders = [s["leader"] for s in json.loads(status.stdout)["stages"]]
        assert [leader["address"] for leader in leaders] == [
            f"{hosts.address[f'stage{k}']}:50051" for k in range(CFG.n_stages)
        ]  # bound to 0.0.0.0, each advertises its host's one routable address
        assert all(leader["health"] == "SERVING" for leader in leaders)

        result = _robot(hosts.run_in("robot", []), f"{hosts.address['robot']}:50050")
    finally:
        for process in reversed(started):
            process.stop(10)

    for session in result["sessions"]:
        want, _ = reference_run(model, observations(session["seed"], STEPS, CFG.observation_dim))
        assert session["modes"] == ["FULL"] * STEPS
        for seq, (got, expected) in enumerate(zip(session["actions"], want, strict=True), start=1):
            assert torch.allclose(torch.tensor(got), expected, atol=ATOL), f"seq {seq} differs"

    # The same robot against the same model on loopback, for the latency next to it.
    with LocalCluster(cluster_settings(tmp_path / "loopback", stages=2), model=CFG) as local:
        loopback = _robot([], local.address)
    multi_ms = statistics.median(result["step_ms"])
    loop_ms = statistics.median(loopback["step_ms"])
    print(f"\nstep p50: four hosts {multi_ms:.2f} ms, loopback {loop_ms:.2f} ms")
