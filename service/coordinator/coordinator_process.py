"""Start a coordinator: reach the state store and the stages' replicas, then serve sessions."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from fallback.admission import AdmissionConfig, AdmissionController
from service.coordinator import session_handlers
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets
from service.coordinator.batcher import DynamicBatcher
from service.coordinator.engine import Durability, SessionEngine, SessionLimits
from service.coordinator.pipeline import Pipeline, PipelineInput, PipelineOutput
from service.coordinator.routing.call_patience import Patience
from service.coordinator.routing.discovery import discover_model, static_table
from service.coordinator.routing.replica_choice import BanPolicy
from service.coordinator.routing.stage_router import StageRouter, grpc_transport
from service.coordinator.routing.versions import VersionCatalog
from service.coordinator.serve_modes import ServeModes
from service.coordinator.session_cache import SessionCache
from service.coordinator.session_servicer import SessionServicer
from service.model.config import ModelConfig
from service.proto import session_pb2
from service.runtime.grpc_server import GrpcProcess
from service.runtime.settings import CoordinatorSettings
from state.backends import open_routing_table, open_session_store
from state.leadership import RoutingTable
from state.store import SessionStore

log = logging.getLogger(__name__)


def routing_table(settings: CoordinatorSettings) -> RoutingTable:
    if settings.etcd:
        table = open_routing_table(settings.etcd, settings.cluster)
        table.start()
        return table
    if not settings.stage_addresses:
        raise SystemExit(
            "coordinator: no stages configured; pass --etcd etcd://host:port (stages register "
            "there) or --stage-addresses host:port,... (one shard per stage)"
        )
    return static_table(settings.stage_addresses, settings.stage_connect_timeout_s)


@dataclass(frozen=True)
class StepPath:
    """Everything a step goes through, built once; closed in reverse on shutdown."""

    engine: SessionEngine
    catalog: VersionCatalog
    batcher: DynamicBatcher[PipelineInput, PipelineOutput]
    router: StageRouter

    def close(self) -> None:
        self.catalog.stop()
        self.batcher.close()
        self.router.close()


def build_step_path(
    settings: CoordinatorSettings, store: SessionStore, table: RoutingTable, model: ModelConfig
) -> StepPath:
    router = StageRouter(
        table,
        settings.stage_timeout_s,
        BanPolicy(settings.ban_base_s, settings.ban_max_s),
        patience=Patience(settings.stage_patience_multiple, settings.stage_patience_min_s),
    )
    assets = ModelAssets(settings)
    catalog = VersionCatalog(table, model, grpc_transport)
    for version in catalog.start().whole:  # what is servable now, loaded before serving
        assets.get(version)
    table.subscribe(  # and every version that appears, in the background, before its first step
        lambda views: assets.prefetch(
            {r.model_version for view in views.values() for r in view.replicas.values()}
        )
    )
    batcher = DynamicBatcher(
        Pipeline(router, model.n_stages).run,
        settings.batch_max_size,
        settings.batch_max_wait_ms / 1e3,
        settings.max_inflight_batches,
    )
    engine = SessionEngine(
        store=store,
        cache=SessionCache(settings.session_cache_size),
        modes=ServeModes(store, batcher, model, settings.observation_log_depth),
        versions=catalog,
        assets=assets,
        health=router.healthy,
        admission=AdmissionGate(
            AdmissionController(
                AdmissionConfig(settings.admission_max_inflight, settings.admission_max_queue)
            )
        ),
        limits=SessionLimits(
            default_ttl_s=settings.session_ttl_s,
            max_ttl_s=settings.max_session_ttl_s,
            log_depth=settings.observation_log_depth,
            catch_up_budget_s=settings.catch_up_budget_s,
            max_observation_abs=settings.max_observation_abs,
        ),
        durability=Durability(
            max_wait_replicas=settings.max_wait_replicas,
            wait_timeout_s=settings.replica_wait_timeout_s,
        ),
    )
    return StepPath(engine, catalog, batcher, router)


def run(settings: CoordinatorSettings) -> None:
    store = open_session_store(settings.redis_url, settings.redis_timeout_s)
    if not store.ping():
        raise SystemExit(f"coordinator: session store {settings.redis_url} does not answer")
    table = routing_table(settings)
    model, version = discover_model(table, settings.stage_connect_timeout_s)
    path = build_step_path(settings, store, table, model)
    servicer = SessionServicer(path.engine, settings.step_timeout_s, settings.max_observation_bytes)

    def register(server: grpc.Server) -> list[str]:
        session_handlers.add_to_server(servicer, server)
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
        "coordinator model=%s stages=%d routing=%s redis=%s",
        version,
        model.n_stages,
        settings.etcd or settings.stage_addresses,
        settings.redis_url,
    )
    process.start(settings.ready_file)
    try:
        process.run_until_signal()
    finally:
        path.close()
        table.stop()
        store.close()
