"""`actionmesh status`: who leads each stage and who stands by, live from etcd, with health."""

from __future__ import annotations

import json
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actionmesh_client.client_tls import open_channel
from service.runtime.command_settings import StatusSettings
from service.runtime.tls import channel_credentials, etcd_tls
from state.backends import open_routing_table
from state.leadership import LeadershipUnavailable, ReplicaInfo, StageView


def probe(
    address: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
) -> str:
    """The replica's gRPC health status, or UNREACHABLE."""
    with open_channel(address, credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _replica(info: ReplicaInfo, health: str) -> dict[str, Any]:
    return {
        "replica_id": info.replica_id,
        "address": info.address,
        "model_version": info.model_version,
        "epoch": info.lease_id,
        "health": health,
    }


def describe(
    views: dict[int, StageView],
    probe_timeout_s: float,
    credentials: grpc.ChannelCredentials | None = None,
) -> list[dict[str, Any]]:
    def health(info: ReplicaInfo) -> dict[str, Any]:
        return _replica(info, probe(info.address, probe_timeout_s, credentials))

    stages = []
    for k, view in sorted(views.items()):
        leader_id = view.leader.replica_id if view.leader else None
        standbys = [r for rid, r in sorted(view.replicas.items()) if rid != leader_id]
        stages.append(
            {
                "stage": k,
                "leader": health(view.leader) if view.leader else None,
                "standbys": [health(r) for r in standbys],
            }
        )
    return stages


def collect(settings: StatusSettings) -> dict[str, Any]:
    if not settings.etcd:
        raise SystemExit("status: pass --etcd etcd://host:port (`actionmesh up` prints it)")
    table = open_routing_table(settings.etcd, settings.cluster, etcd_tls(settings.tls_dir, "admin"))
    try:
        table.start()
        views, desired = table.snapshot(), table.desired_version()
    except LeadershipUnavailable as exc:
        raise SystemExit(f"status: etcd {settings.etcd} unreachable: {exc}") from exc
    finally:
        table.stop()
    return {
        "cluster": settings.cluster,
        "etcd": settings.etcd,
        "desired_version": desired,
        # Over TLS the probes present the cluster's own identity, as coordinators do to shards.
        "stages": describe(
            views,
            settings.probe_timeout_s,
            None if settings.tls_dir is None else channel_credentials(settings.tls_dir, "shard"),
        ),
    }


def print_table(status: dict[str, Any]) -> None:
    print(f"cluster {status['cluster']}  etcd {status['etcd']}")
    print(
        f"desired model version: {status['desired_version'] or '(none set: ckpt promote --etcd)'}"
    )
    print(f"{'stage':<6}{'role':<9}{'replica':<16}{'address':<22}{'model':<16}{'epoch':<20}health")
    for stage in status["stages"]:
        rows = [("leader", stage["leader"])] if stage["leader"] else [("leader", None)]
        rows += [("standby", r) for r in stage["standbys"]]
        for role, r in rows:
            if r is None:
                print(f"{stage['stage']:<6}{role:<9}(none: no replica holds the lease)")
                continue
            print(
                f"{stage['stage']:<6}{role:<9}{r['replica_id']:<16}{r['address']:<22}"
                f"{r['model_version']:<16}{r['epoch']:<20}{r['health']}"
            )
    if not status["stages"]:
        print("no stage has registered a replica")


def main(settings: StatusSettings) -> int:
    status = collect(settings)
    if settings.json_output:
        print(json.dumps(status))
    else:
        print_table(status)
    return 0
