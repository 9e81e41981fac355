"""Start a shard: load this stage's weights, set its runtime's threads, serve until a signal.

With an etcd URL the shard registers for its stage and campaigns for leadership; a standby
serves exactly like a leader (shards are stateless), it is just not routed to first.

`--runtime torch` runs the `Stage` module; `--runtime onnx` (or `onnx-int8`) runs the stage's
exported graph on ONNX Runtime, and this process never imports torch (nothing here does at
module level: tests/integration/test_onnx_shard.py checks it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from service.model.weights_files import read_info
from service.proto import stage_pb2, stage_pb2_grpc
from service.runtime import logs, metrics, tls, tracing
from service.runtime.advertise import advertise_address, host_addresses
from service.runtime.gc_pauses import freeze_startup_objects
from service.runtime.grpc_server import GrpcProcess, exit_now
from service.runtime.malloc_arenas import limit_malloc_arenas
from service.runtime.settings import ShardSettings
from service.shard.cluster_only import ClusterOnly
from service.shard.stage_runtime import StageRuntime
from service.shard.stage_servicer import StageServicer
from service.shard.version_follower import RETIRE_AFTER_S, VersionFollower
from state.backends import open_replica_membership, open_routing_table
from state.etcd_url import parse_etcd_url
from state.leadership import ReplicaInfo, ReplicaMembership, Role

log = logging.getLogger(__name__)

# After giving up leadership, keep serving this long so coordinators see the change first.
DRAIN_S = 0.5


def open_runtime(settings: ShardSettings, directory: Path) -> StageRuntime:
    """This shard's stage from a weights directory, on the runtime --runtime names; the
    runtime's module (and torch, for the torch one) is imported here, not before."""
    if settings.runtime == "torch":
        from service.shard import torch_stage

        return torch_stage.load(directory, settings.stage)
    from service.shard.onnx_stage import OnnxStage

    return OnnxStage(
        directory,
        settings.stage,
        int8=settings.runtime == "onnx-int8",
        threads=settings.torch_threads,
    )


def load_stage(settings: ShardSettings) -> tuple[StageRuntime, str, bool]:
    """This shard's stage, the model version it advertises, and whether it came from flash
    without asking the remote (then reconcile with it in the background: _reconcile)."""
    directory, reconcile = settings.weights_dir, False
    if settings.flash_dir is not None:
        from service.runtime.checkpoint_source import verified_weights

        directory, reconcile = verified_weights(settings, settings.flash_dir)
    if directory is not None:
        return open_runtime(settings, directory), read_info(directory).version, reconcile
    if settings.runtime != "torch":
        raise SystemExit(
            f"--runtime {settings.runtime} serves exported weights: pass --weights-dir or "
            "--flash-dir (see `actionmesh export`)"
        )
    from service.shard import torch_stage

    stage, version = torch_stage.initialised(
        settings.n_stages, settings.seed, settings.stage, settings.stage_boundaries
    )
    return stage, version, False


def _load_version(
    settings: ShardSettings, flash_dir: Path, version: str, n_stages: int, serving: str
) -> StageRuntime:
    from service.runtime.checkpoint_source import version_weights

    directory = version_weights(settings, flash_dir, version, serving)
    config = read_info(directory).config
    if config.n_stages != n_stages:
        raise ValueError(
            f"version {version} has {config.n_stages} stages, this pipeline {n_stages}"
        )
    return open_runtime(settings, directory)


def _reconcile(
    settings: ShardSettings,
    servicer: StageServicer,
    membership: ReplicaMembership | None,
    follower: VersionFollower | None,
) -> None:
    """In the background, after serving the version on flash: move to the remote CURRENT if
    it names another one, as a start would have, unless the cluster's desired version (etcd)
    governs this shard's version (then its follower moves it)."""
    from service.runtime.checkpoint_source import reconcile

    assert settings.flash_dir is not None
    serving = servicer.version
    target = reconcile(settings, settings.flash_dir, serving)
    if target is None:
        return
    if follower is not None and follower.table.desired_version() is not None:
        log.info("version=%s not loaded: the cluster's desired version decides", target)
        return
    try:
        stage = _load_version(
            settings, settings.flash_dir, target, servicer.stage.cfg.n_stages, serving
        )
    except Exception as exc:  # keep serving what is here
        log.error(
            "version=%s (remote CURRENT) could not be loaded, serving %s: %s", target, serving, exc
        )
        return
    servicer.swap(stage, target, RETIRE_AFTER_S)
    if membership is not None:
        membership.announce(dataclasses.replace(membership.info, model_version=target))
    log.info("stage=%d now serves %s, the remote CURRENT (was %s)", stage.index, target, serving)


class RoleKnown:
    """A shard's readiness: with etcd, it serves traffic once it knows whether it leads or
    stands by (its lease granted); before, and after losing it, it is not ready."""

    def __init__(self, needed: bool) -> None:
        self.needed = needed
        self.membership: ReplicaMembership | None = None

    def __call__(self) -> bool:
        if not self.needed:
            return True
        return self.membership is not None and self.membership.role in (Role.LEADER, Role.STANDBY)


def _in_background(target: Callable[..., None], *args: object) -> None:
    threading.Thread(target=target, args=args, name=target.__name__, daemon=True).start()


def _follower(
    settings: ShardSettings,
    servicer: StageServicer,
    membership: ReplicaMembership,
    n_stages: int,
) -> VersionFollower | None:
    """Follows the cluster's desired version: only a shard that loads checkpoints can."""
    flash_dir = settings.flash_dir
    if settings.etcd is None or flash_dir is None:
        log.info("not following the desired model version: no --flash-dir (checkpoints)")
        return None

    def load(version: str) -> StageRuntime:
        return _load_version(settings, flash_dir, version, n_stages, servicer.version)

    table = open_routing_table(
        settings.etcd, settings.cluster, tls.etcd_tls(settings.tls_dir, "shard")
    )
    follower = VersionFollower(table, membership, servicer, load, n_stages)
    follower.start()
    return follower


def advertised(settings: ShardSettings, port: int) -> str:
    """host:port this shard registers in etcd; exits with the flag to set when it would be one
    that coordinators on other hosts cannot dial (see service/runtime/advertise.py)."""
    if settings.etcd is None:  # registers nowhere: the address only names the replica
        return settings.advertise_address or f"{settings.host}:{port}"
    etcd_hosts = [host for host, _ in parse_etcd_url(settings.etcd)]
    try:
        return advertise_address(
            settings.host, port, settings.advertise_address, etcd_hosts, host_addresses()
        )
    except ValueError as exc:  # UnroutableAddress, or a bad etcd URL: a usage error
        print(f"actionmesh shard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def pin(cpus: list[int]) -> None:
    """Keep this process on `cpus`; a core this machine does not offer is a usage error."""
    if not cpus:
        return
    offered = sorted(os.sched_getaffinity(0))
    if not set(cpus) <= set(offered):
        print(
            f"actionmesh shard: --cpus {cpus}: this process may run on cores {offered}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    os.sched_setaffinity(0, cpus)


def run(settings: ShardSettings) -> None:
    logs.write_in_background(metrics.LOG_LINES_DROPPED.inc)  # a stalled sink holds no call
    advertised(settings, settings.port)  # refuse before loading weights, not after
    pin(settings.cpus)
    tracing.configure(
        settings.otlp_endpoint,
        "actionmesh-shard",
        {"actionmesh.stage": settings.stage},
        settings.trace_sample_ratio,
    )
    try:
        _serve(settings)
    finally:
        tracing.shutdown()
    exit_now(0)  # stopped cleanly: nothing is left for the interpreter's teardown to do


def _serve(settings: ShardSettings) -> None:
    if settings.runtime == "torch":
        from service.shard import torch_stage

        torch_stage.set_threads(settings.torch_threads)
    else:  # the small-device runtimes: one heap (malloc_arenas.py)
        limit_malloc_arenas(1)
    try:
        stage, version, reconcile = load_stage(settings)
    except ValueError as exc:  # a stage out of range, a graph that cannot be served (one line)
        raise SystemExit(f"shard: stage {settings.stage}: {exc}") from exc
    servicer = StageServicer(stage, version)

    def register(server: grpc.Server) -> list[str]:
        served = servicer if settings.tls_dir is None else ClusterOnly(servicer)
        stage_pb2_grpc.add_StageServiceServicer_to_server(served, server)
        return [stage_pb2.DESCRIPTOR.services_by_name["StageService"].full_name]

    role = RoleKnown(needed=settings.etcd is not None)
    process = GrpcProcess(
        f"shard-{settings.stage}",
        settings.host,
        settings.port,
        settings.metrics_port,
        settings.grpc_workers,
        register,
        credentials=None
        if settings.tls_dir is None
        else tls.server_credentials(settings.tls_dir, "shard"),
        max_concurrent_rpcs=settings.concurrent_rpcs(),
        max_message_bytes=settings.max_message_bytes,
        is_ready=role,  # its weights are loaded by now
        health_interval_s=settings.health_interval_s,
        metrics_role="shard",
    )
    metrics.publish_build_info("shard")
    address = advertised(settings, process.port)
    servicer.replica_id = settings.replica_id or f"stage-{settings.stage}@{address}"
    log.info(
        "stage=%d replica=%s layers=%d..%d model=%s runtime=%s threads=%d",
        stage.index,
        servicer.replica_id,
        *stage.cfg.layer_range(stage.index),
        version,
        settings.runtime,
        settings.torch_threads,
    )
    freeze_startup_objects()  # no full collection walks them while steps wait
    process.start(settings.ready_file)
    if settings.etcd is None:
        if reconcile:
            _in_background(_reconcile, settings, servicer, None, None)
        process.run_until_signal(settings.shutdown_grace_s, drain_delay_s=settings.drain_delay_s)
        return
    membership = open_replica_membership(
        settings.etcd,
        settings.cluster,
        ReplicaInfo(settings.stage, servicer.replica_id, address, version),
        settings.lease_ttl_s,
        tls.etcd_tls(settings.tls_dir, "shard"),
    )
    servicer.role = lambda: membership.role.value
    role.membership = membership
    membership.start()
    follower = _follower(settings, servicer, membership, stage.cfg.n_stages)
    if reconcile:
        _in_background(_reconcile, settings, servicer, membership, follower)

    def step_down() -> None:
        membership.stop()  # first: a standby takes over at once, whatever the follower does
        if follower is not None:
            follower.stop()
        time.sleep(DRAIN_S)

    process.run_until_signal(
        settings.shutdown_grace_s,
        before_stop=step_down,
        drain_delay_s=settings.drain_delay_s,
        on_signal=membership.retire,  # a stopping replica must not take over leadership
    )
