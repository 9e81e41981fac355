"""Start-up: learn which stages exist, which model they serve, and build the routing table."""

from __future__ import annotations

import json
import logging
import time

from actionmesh_client.client_tls import ClientTls
from service.coordinator.routing.stage_client import StageClient
from service.coordinator.routing.version_choice import serving_version
from service.coordinator.step_errors import Unavailable
from service.model.config import ModelConfig
from service.proto import stage_pb2
from state.leadership import ReplicaInfo, RoutingTable, StageView
from state.static_routing import StaticRoutingTable

log = logging.getLogger(__name__)

_POLL_S = 0.1


def _info(address: str, stage: int, timeout_s: float, tls: ClientTls | None) -> stage_pb2.InfoReply:
    client = StageClient(stage, address, tls)
    try:
        return client.info(max(0.1, timeout_s))
    except Unavailable as exc:
        raise SystemExit(
            f"coordinator: stage {stage} replica at {address} did not answer Info within "
            f"{timeout_s:.1f}s (stage_connect_timeout_s): {exc}"
        ) from exc
    finally:
        client.close()


def static_table(
    addresses: list[str], timeout_s: float, tls: ClientTls | None = None
) -> StaticRoutingTable:
    """One replica per stage, in stage order, from `--stage-addresses`."""
    deadline = time.monotonic() + timeout_s
    views = {}
    for k, address in enumerate(addresses):
        info = _info(address, k, deadline - time.monotonic(), tls)
        if info.stage != k:
            raise SystemExit(
                f"coordinator: {address} serves stage {info.stage}, listed as stage {k}"
            )
        replica = ReplicaInfo(k, info.replica_id or address, address, info.model_version)
        views[k] = StageView(k, leader=replica, replicas={replica.replica_id: replica})
    return StaticRoutingTable(views)


def discover_model(
    table: RoutingTable, timeout_s: float, tls: ClientTls | None = None
) -> tuple[ModelConfig, str]:
    """Wait until every stage has a replica of one model version; its config and version."""
    deadline = time.monotonic() + timeout_s
    model: ModelConfig | None = None
    while time.monotonic() < deadline:
        views = table.snapshot()
        if model is None and views:
            any_replica = next(r for v in views.values() for r in v.replicas.values())
            info = _info(any_replica.address, any_replica.stage, deadline - time.monotonic(), tls)
            model = ModelConfig(**json.loads(info.model_config_json))
        if model is not None and (version := serving_version(views, model.n_stages)):
            _check_stages(views, model, version, deadline, tls)
            return model, version
        time.sleep(_POLL_S)
    raise SystemExit(
        f"coordinator: within {timeout_s:.0f}s (stage_connect_timeout_s) no model version was "
        f"served by every stage; the routing table has {sorted(table.snapshot())}"
    )


def _check_stages(
    views: dict[int, StageView],
    model: ModelConfig,
    version: str,
    deadline: float,
    tls: ClientTls | None,
) -> None:
    """Every stage's replica of `version` agrees on the model's config and its own position."""
    want = json.dumps(model.model_dump(), sort_keys=True)
    for k in range(model.n_stages):
        replica = next(r for r in views[k].replicas.values() if r.model_version == version)
        info = _info(replica.address, k, deadline - time.monotonic(), tls)
        if info.stage != k or info.model_config_json != want:
            raise SystemExit(
                f"coordinator: replica {replica.replica_id} at {replica.address} registered for "
                f"stage {k} of model {version} but serves stage {info.stage} of config "
                f"{info.model_config_json}"
            )
