"""Start a coordinator: reach the state store and every stage, then serve the session API."""

from __future__ import annotations

import json
import logging
import time

import grpc

from service.config import CoordinatorSettings
from service.coordinator.batcher import DynamicBatcher
from service.coordinator.engine import SessionEngine
from service.coordinator.pipeline import Pipeline, StageClient
from service.coordinator.servicer import SessionServicer
from service.grpc_server import GrpcProcess
from service.model.config import ModelConfig
from service.proto import session_pb2, session_pb2_grpc, stage_pb2
from state.backends import open_session_store

log = logging.getLogger(__name__)


def connect_stages(settings: CoordinatorSettings) -> tuple[list[StageClient], ModelConfig, str]:
    """Clients for every stage, after checking they serve one model, split as configured."""
    if not settings.stage_addresses:
        raise SystemExit("coordinator: no stages configured; pass --stage-addresses host:port,...")
    clients = [StageClient(k, a) for k, a in enumerate(settings.stage_addresses)]
    deadline = time.monotonic() + settings.stage_connect_timeout_s
    infos: list[stage_pb2.InfoReply] = []
    for client in clients:
        try:
            infos.append(client.info(max(0.1, deadline - time.monotonic())))
        except grpc.RpcError as exc:
            raise SystemExit(
                f"coordinator: stage {client.stage} at {client.address} did not answer within "
                f"stage_connect_timeout_s={settings.stage_connect_timeout_s}: {exc}"
            ) from exc
    first = infos[0]
    for k, info in enumerate(infos):
        problems = []
        if info.stage != k:
            problems.append(f"serves stage {info.stage}, expected {k}")
        if info.n_stages != len(clients):
            problems.append(
                f"is part of a {info.n_stages}-stage model, {len(clients)} addresses given"
            )
        if (info.model_version, info.model_config_json) != (
            first.model_version,
            first.model_config_json,
        ):
            problems.append(
                f"serves model {info.model_version}, stage 0 serves {first.model_version}"
            )
        if problems:
            raise SystemExit(f"coordinator: {clients[k].address}: " + "; ".join(problems))
    return clients, ModelConfig(**json.loads(first.model_config_json)), first.model_version


def run(settings: CoordinatorSettings) -> None:
    store = open_session_store(settings.redis_url, settings.redis_timeout_s)
    if not store.ping():
        raise SystemExit(f"coordinator: session store {settings.redis_url} does not answer")
    clients, model, version = connect_stages(settings)
    pipeline = Pipeline(clients, version, settings.stage_timeout_s)
    batcher = DynamicBatcher(
        pipeline.run,
        settings.batch_max_size,
        settings.batch_max_wait_ms / 1e3,
        settings.max_inflight_batches,
    )
    engine = SessionEngine(
        store, batcher, model, version, settings.session_ttl_s, settings.max_session_ttl_s
    )
    servicer = SessionServicer(engine, settings.step_timeout_s, settings.max_observation_bytes)

    def register(server: grpc.Server) -> list[str]:
        session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server)
        return [session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name]

    process = GrpcProcess(
        "coordinator",
        settings.host,
        settings.port,
        settings.metrics_port,
        settings.grpc_workers,
        register,
        is_ready=store.ping,
    )
    log.info(
        "coordinator model=%s stages=%s redis=%s",
        version,
        settings.stage_addresses,
        settings.redis_url,
    )
    process.start(settings.ready_file)
    try:
        process.run_until_signal()
    finally:
        batcher.close()
        pipeline.close()
        store.close()
