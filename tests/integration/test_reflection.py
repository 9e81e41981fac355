"""Both servers offer health checking and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.local.local_cluster import LocalCluster


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        return {s.name for s in response.list_services_response.service}


@pytest.mark.parametrize("which", ["coordinator", "shard"])
def test_reflection_lists_the_api_and_health(cluster: LocalCluster, which: str) -> None:
    address = cluster.address if which == "coordinator" else cluster.stage_addresses()[0]
    api = (
        "actionmesh.v1.SessionService"
        if which == "coordinator"
        else "actionmesh.internal.v1.StageService"
    )
    assert {api, "grpc.health.v1.Health"} <= listed_services(address)
