"""gRPC health and /ready tell the truth over time: a coordinator whose Redis is gone says
NOT_SERVING (and /ready 503) until Redis is back; on SIGTERM a process says NOT_SERVING while
it still serves, for its drain delay, before it refuses calls; a shard says SERVING once it
knows its role."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.local.local_cluster import LocalCluster
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.waiting import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SESSION_SERVICE = "actionmesh.v1.SessionService"
STAGE_SERVICE = "actionmesh.internal.v1.StageService"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    settings = cluster_settings(tmp_path_factory.mktemp("health"))
    overrides = {"health_interval_s": 0.2, "redis_timeout_s": 0.5, "replica_wait_timeout_s": 0.2}
    with LocalCluster(settings, SMALL_MODEL, coordinator_overrides=overrides) as running:
        yield running


def health_of(port: int, service: str = "") -> int | None:
    """The status a health Check answers, or None when the call fails (server gone)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


def ready_status(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_shard_serves_once_its_role_is_known(cluster: LocalCluster) -> None:
    for shard in cluster.shards:
        port = shard.ports["grpc_port"]
        wait_for(lambda p=port: health_of(p, STAGE_SERVICE) == SERVING, 10, "shard SERVING")
        assert health_of(port) == SERVING
        assert ready_status(shard.ports["metrics_port"]) == 200


def test_a_coordinator_without_redis_is_not_serving_until_redis_is_back(
    cluster: LocalCluster,
) -> None:
    assert cluster.coordinator is not None and cluster.redis is not None
    grpc_port = cluster.coordinator.ports["grpc_port"]
    metrics_port = cluster.coordinator.ports["metrics_port"]
    assert (health_of(grpc_port, SESSION_SERVICE), ready_status(metrics_port)) == (SERVING, 200)
    cluster.redis.stop()
    try:
        wait_for(lambda: health_of(grpc_port, SESSION_SERVICE) == NOT_SERVING, 10, "NOT_SERVING")
        assert health_of(grpc_port) == NOT_SERVING
        assert ready_status(metrics_port) == 503
        # Its log (not a terminal: JSON lines) says so, once its writer thread gets to it.
        log_path = cluster.coordinator.log_path

        def says_not_ready() -> bool:
            lines = log_path.read_text().splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            return any(e["msg"] == "coordinator is not ready (NOT_SERVING)" for e in events)

        wait_for(says_not_ready, 10, "the coordinator's log says NOT_SERVING")
    finally:
        cluster.redis.restart()
    wait_for(lambda: health_of(grpc_port, SESSION_SERVICE) == SERVING, 10, "SERVING again")
    assert ready_status(metrics_port) == 200


def test_sigterm_turns_health_not_serving_during_the_drain_delay(
    cluster: LocalCluster,
) -> None:
    drain_s = 3.0
    child = cluster.start_coordinator("coordinator-draining", 0, "--drain-delay-s", str(drain_s))
    grpc_port, metrics_port = child.ports["grpc_port"], child.ports["metrics_port"]
    assert health_of(grpc_port, SESSION_SERVICE) == SERVING
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SESSION_SERVICE), timeout=30
        )
        assert next(watch).status == SERVING
        child.terminate()
        assert next(watch).status == NOT_SERVING  # told to a watcher, as it happens
        watch.cancel()
    # An answer at all means the drain delay has not run out (after it, calls are refused):
    # while it still serves, it says NOT_SERVING and /ready 503.
    assert health_of(grpc_port, SESSION_SERVICE) == NOT_SERVING
    assert ready_status(metrics_port) == 503
    wait_for(lambda: child.returncode() is not None, 30, "the coordinator exits")
    assert child.returncode() == 0
