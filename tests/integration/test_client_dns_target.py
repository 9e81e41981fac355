"""Robots reach coordinators by DNS: the client takes a gRPC `dns:///host:port` target (on
Kubernetes, the coordinators' headless Service name resolves to every ready pod)."""

from __future__ import annotations

from chaos.reference import observations
from service.client import ActionMeshClient
from service.local.local_cluster import LocalCluster
from tests.conftest import SMALL_MODEL


def test_client_steps_through_a_dns_target(cluster: LocalCluster) -> None:
    port = cluster.address.rsplit(":", 1)[1]
    target = f"dns:///localhost:{port}"
    with ActionMeshClient([target]) as client:
        assert client.current_address == target
        session = client.open_session()
        results = [session.step(o) for o in observations(7, 5, SMALL_MODEL.observation_dim)]
        assert session.seq == 5
        assert [r.serve_mode for r in results] == ["FULL"] * 5
        assert session.close()
