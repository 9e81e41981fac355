"""Shared fixtures: a real local cluster (redis-server, shard and coordinator processes), a tiny
trained model; and the tier markers: every test under tests/unit is marked `unit` (no process,
no socket), every test under tests/integration `integration` (`pytest -m unit` runs the first)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.local.local_cluster import LocalCluster
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2_grpc
from service.runtime.settings import ClusterSettings
from tests.support.training import trained

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration")

# Small enough to keep the suite quick on 2 cores; same code paths as the default size.
SMALL_MODEL = ModelConfig(d_model=64, n_heads=4, n_layers=3, tokens=8, memory_tokens=2, n_stages=3)


def cluster_settings(work_dir: Path, **overrides: object) -> ClusterSettings:
    return ClusterSettings.model_validate(
        {"stages": 3, "port": 0, "work_dir": work_dir, "start_timeout_s": 60, **overrides}
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    work_dir = tmp_path_factory.mktemp("cluster")
    with LocalCluster(cluster_settings(work_dir), model=SMALL_MODEL) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActionModel, str, Path]:
    """A model trained in process at a tiny size (tests.support.training.TINY): model, version,
    and the directory its weights were saved to. Trained once per session (about 10 s)."""
    directory = tmp_path_factory.mktemp("tiny")
    model, version = trained(directory)
    return model, version, directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        for tier in TIERS:
            if path.is_relative_to(TESTS / tier):
                item.add_marker(tier)
