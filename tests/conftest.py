"""Shared fixtures: a real local cluster (redis-server, shard and coordinator processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.config import ClusterSettings
from service.local_cluster import LocalCluster
from service.model.config import ModelConfig
from service.proto import session_pb2_grpc

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
