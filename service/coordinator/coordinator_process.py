"""Start a coordinator: reach the state store and the stages' replicas, then serve sessions."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from actionmesh_client.client_tls import ClientTls
from fallback.admission import AdmissionConfig, AdmissionController
from service.coordinator import session_handlers
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets
from service.coordinator.batcher import DynamicBatcher
from service.coordinator.drain import Drain
from service.coordinator.engine import Durability, SessionEngine, SessionLimits
from service.coordinator.pipeline import Pipeline, PipelineInput, PipelineOutput
from service.coordinator.routing.call_patience import Patience
from service.coordinator.routing.discovery import discover_model, static_table
from service.coordinator.routing.replica_choice import BanPolicy
from service.coordinator.routing.stage_router import StageRouter, grpc_transports
from service.coordinator.routing.versions import VersionCatalog
from service.coordinator.serve_modes import ServeModes
from service.coordinator.session_access import SessionAccess
from service.coordinator.session_cache import SessionCache
from service.coordinator.session_servicer import SessionServicer
from service.model.config import ModelConfig
from service.proto import session_pb2
from service.runtime import logs, metrics, secrets, tls, tracing
from service.runtime.gc_pauses import freeze_startup_objects
from service.runtime.grpc_server import GrpcProcess, exit_now
from service.runtime.identities_file import IdentitiesFile, IdentitiesFileError, parse_scopes
from service.runtime.rate_limit import RateLimiter
from service.runtime.settings import CoordinatorSettings
from state.backends import open_routing_table, open_session_store
from state.leadership import RoutingTable
from state.redis_url import RedisCredentials, read_secret, redacted
from state.store import SessionStore

log = logging.getLogger(__name__)


def shard_tls(settings: CoordinatorSettings) -> ClientTls | None:
    """Mutual TLS to shards with the cluster's own identity (`shard`), re-read from disk when
    rotated; None: plaintext."""
    return None if settings.tls_dir is None else tls.client_tls(settings.tls_dir, "shard")


def session_access(settings: CoordinatorSettings) -> SessionAccess:
    """The `auth` settings as the servicer's gatekeeper; SystemExit (one line) when they
    cannot be used."""
    if settings.auth == "off":
        return SessionAccess.open_door()
    path = secrets.identities_path(settings.identities_file, settings.secrets_dir)
    if path is None and settings.auth != "mtls":
        raise SystemExit(
            f"coordinator: --auth {settings.auth} needs --identities-file (or identities.toml in "
            "--secrets-dir); `actionmesh token add` makes one"
        )
    try:
        scopes = parse_scopes(settings.cert_default_scopes, "--cert-default-scopes")
        directory = IdentitiesFile(path, scopes)
    except IdentitiesFileError as exc:
        raise SystemExit(f"coordinator: {exc}") from exc
    rate = settings.identity_steps_per_s
    log.info(
        "coordinator auth=%s identities=%s tokens=%d steps_per_s=%s sessions_per_identity=%s",
        settings.auth,
        path,
        len(directory.tokens()),
        rate or "unlimited",
        settings.sessions_per_identity or "unlimited",
    )
    return SessionAccess(settings.auth, directory, RateLimiter(rate, 2 * rate) if rate else None)


def routing_table(settings: CoordinatorSettings) -> RoutingTable:
    if settings.etcd:
        table = open_routing_table(
            settings.etcd, settings.cluster, tls.etcd_tls(settings.tls_dir, "coordinator")
        )
        table.start()
        return table
    if not settings.stage_addresses:
        raise SystemExit(
            "coordinator: no stages configured; pass --etcd etcd://host:port (stages register "
            "there) or --stage-addresses host:port,... (one shard per stage)"
        )
    return static_table(
        settings.stage_addresses, settings.stage_connect_timeout_s, shard_tls(settings)
    )


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
    connect = grpc_transports(shard_tls(settings))
    router = StageRouter(
        table,
        settings.stage_timeout_s,
        BanPolicy(settings.ban_base_s, settings.ban_max_s),
        connect=connect,
        patience=Patience(settings.stage_patience_multiple, settings.stage_patience_min_s),
    )
    assets = ModelAssets(settings)
    catalog = VersionCatalog(table, model, connect)
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
            sessions_per_identity=settings.sessions_per_identity if settings.auth != "off" else 0,
        ),
        durability=Durability(
            max_wait_replicas=settings.max_wait_replicas,
            wait_timeout_s=settings.replica_wait_timeout_s,
        ),
    )
    return StepPath(engine, catalog, batcher, router)


def _store_reachable(store: SessionStore) -> bool:
    """The coordinator's readiness: its session store answers (also a gauge for dashboards)."""
    reachable = store.ping()
    metrics.REDIS_CONNECTED.set(1 if reachable else 0)
    return reachable


def redis_credentials(settings: CoordinatorSettings) -> RedisCredentials:
    """The AUTH password from its file; with --tls-dir, the files a rediss:// store needs."""
    password = None
    password_file = secrets.redis_password_path(settings.redis_password_file, settings.secrets_dir)
    if password_file is not None:
        try:
            password = read_secret(password_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"coordinator: redis password file: {exc}") from exc
    files = (
        None if settings.tls_dir is None else tls.TlsFiles.of_role(settings.tls_dir, "coordinator")
    )
    if files is None:
        return RedisCredentials(password)
    return RedisCredentials(password, files.ca, files.cert, files.key)


def _open_store(settings: CoordinatorSettings) -> SessionStore:
    """The session store, answering (else SystemExit); a password in the URL is warned of."""
    if urlsplit(settings.redis_url).password:
        log.warning(
            "the session store's password is in --redis-url, where `ps` shows it to every user "
            "of this machine: put it in --redis-password-file or <secrets-dir>/%s instead",
            secrets.REDIS_PASSWORD,
        )
    store = open_session_store(
        settings.redis_url, settings.redis_timeout_s, redis_credentials(settings)
    )
    if not store.ping():
        raise SystemExit(
            f"coordinator: session store {redacted(settings.redis_url)} does not answer"
        )
    return store


def _check_joint_names(settings: CoordinatorSettings, joints: int) -> None:
    """--joint-names that do not fit the model are a usage error (exit 2)."""
    if settings.joint_names and len(settings.joint_names) != joints:
        print(
            f"actionmesh coordinator: --joint-names lists {len(settings.joint_names)} names; "
            f"the model has {joints} joints",
            file=sys.stderr,
        )
        raise SystemExit(2)


def run(settings: CoordinatorSettings) -> None:
    logs.write_in_background(metrics.LOG_LINES_DROPPED.inc)  # a stalled sink holds no step
    # Before any Redis client, channel or server exists: they are instrumented as made.
    tracing.configure(
        settings.otlp_endpoint, "actionmesh-coordinator", sample_ratio=settings.trace_sample_ratio
    )
    access = session_access(settings)
    store = _open_store(settings)
    table = routing_table(settings)
    model, version = discover_model(table, settings.stage_connect_timeout_s, shard_tls(settings))
    path = build_step_path(settings, store, table, model)
    _check_joint_names(settings, model.joints)
    drain = Drain(settings.drain_grace_s)
    servicer = SessionServicer(
        path.engine,
        settings.step_timeout_s,
        settings.max_observation_bytes,
        access,
        action_period_ms=settings.action_period_ms,
        joint_names=settings.joint_names,
        drain=drain,
    )

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
        is_ready=lambda: _store_reachable(store),
        credentials=None
        if settings.tls_dir is None
        else tls.server_credentials(settings.tls_dir, "coordinator"),
        max_concurrent_rpcs=settings.concurrent_rpcs(),
        max_message_bytes=settings.max_message_bytes,
        health_interval_s=settings.health_interval_s,
        metrics_role="coordinator",
    )
    drain.listen(process.readiness.drain)  # an admin's Drain: NOT_SERVING, /ready 503
    metrics.publish_build_info("coordinator")
    log.info(
        "coordinator model=%s stages=%d routing=%s redis=%s",
        version,
        model.n_stages,
        settings.etcd or settings.stage_addresses,
        redacted(settings.redis_url),
    )
    freeze_startup_objects()  # no full collection walks them while steps wait
    process.start(settings.ready_file)
    try:
        process.run_until_signal(
            settings.shutdown_grace_s,
            drain_delay_s=settings.drain_delay_s,
            # no new sessions here from the signal on; steps served until the server stops
            on_signal=lambda: drain.begin(settings.drain_delay_s + settings.shutdown_grace_s),
        )
    finally:
        path.close()
        table.stop()
        store.close()
        tracing.shutdown()
    log.info("coordinator stopped")
    exit_now(0)  # stopped cleanly: skip the interpreter's teardown (seconds, docs/chaos.md)
