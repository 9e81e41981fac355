"""A cluster with several coordinators (`up --coordinators N`): the client library, given
every address, goes on stepping its session when the coordinator it uses is killed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from chaos.reference import observations, reference_run
from service.client import ActionMeshClient
from service.local.local_cluster import LocalCluster
from service.model import weights
from tests.conftest import SMALL_MODEL, cluster_settings


def test_up_offers_the_coordinators_flag() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "service.cli", "up", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--coordinators" in shown


def test_the_client_steps_on_through_a_kill_9_of_its_coordinator(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, coordinators=2)
    with LocalCluster(settings, model=SMALL_MODEL) as cluster:
        addresses = cluster.addresses
        assert len(addresses) == 2 and addresses[0] == cluster.address
        model, _ = weights.load_model(cluster.weights_dir)
        obs = observations(3, 40, SMALL_MODEL.observation_dim)
        want = reference_run(model, obs)[0]
        with ActionMeshClient(addresses, step_timeout_s=2.0) as client:
            session = client.open_session()
            actions = [session.step(o).action for o in obs[:20]]
            assert client.current_address == addresses[0]
            assert cluster.coordinator is not None
            cluster.coordinator.kill()
            killed_at = time.monotonic()
            actions += [session.step(o).action for o in obs[20:]]
            print(f"20 steps after the kill in {time.monotonic() - killed_at:.2f} s")
            assert client.current_address == addresses[1]
            assert session.seq == len(obs) and session.info().seq == len(obs)
        for i, action in enumerate(actions):
            assert torch.allclose(action, want[i], atol=1e-5), f"seq {i + 1}"
