"""Generated code is current, and both servers offer health checking and reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.local_cluster import LocalCluster
from service.proto import generate

PROTO_DIR = Path(generate.__file__).parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = sorted((tmp_path / "service" / "proto").iterdir())
    assert fresh, "the generator wrote nothing"
    for path in fresh:
        checked_in = PROTO_DIR / path.name
        assert checked_in.exists(), (
            f"{path.name} is not checked in: run python -m service.proto.generate"
        )
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run python -m service.proto.generate"
        )


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
