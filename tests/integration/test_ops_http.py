"""Each process serves Prometheus metrics, /live and /ready on its own HTTP port."""

from __future__ import annotations

import urllib.request

import torch

from chaos.reference import open_session, step
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2_grpc
from tests.support.scraping import scrape


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def test_coordinator_and_shards_export_metrics(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    step(stub, sid, 1, torch.zeros(cluster.model.observation_dim))
    assert cluster.coordinator is not None
    port = cluster.coordinator.ports["metrics_port"]
    assert get(port, "/live")[0] == 200
    assert get(port, "/ready")[0] == 200
    coordinator = scrape(port)
    for name, labels in (
        ("actionmesh_step_latency_seconds_count", {"serve_mode": "FULL"}),
        ("actionmesh_stage_call_latency_seconds_count", {"stage": "2"}),
        ("actionmesh_batch_size_count", {}),
        ("actionmesh_redis_commit_seconds_count", {}),
    ):
        assert coordinator.value(name, **labels), (
            f"{name}{labels} missing or 0 in coordinator metrics"
        )
    shard = scrape(cluster.shards[0].ports["metrics_port"])
    assert shard.value("actionmesh_shard_forward_items_total", stage="0")
