"""Start a shard: load this stage's weights, set torch threads, serve until a signal.

With an etcd URL the shard registers for its stage and campaigns for leadership; a standby
serves exactly like a leader (shards are stateless), it is just not routed to first.
"""

from __future__ import annotations

import logging
import time

import grpc
import torch

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.stage import Stage
from service.proto import stage_pb2, stage_pb2_grpc
from service.runtime.grpc_server import GrpcProcess
from service.runtime.settings import ShardSettings
from service.shard.stage_servicer import StageServicer
from service.shard.version_follower import VersionFollower
from state.backends import open_replica_membership, open_routing_table
from state.leadership import ReplicaInfo, ReplicaMembership

log = logging.getLogger(__name__)

# After giving up leadership, keep serving this long so coordinators see the change first.
DRAIN_S = 0.5


def load_stage(settings: ShardSettings) -> tuple[Stage, str]:
    """This shard's stage and the model version it advertises."""
    directory = settings.weights_dir
    if settings.flash_dir is not None:
        from service.runtime.checkpoint_source import verified_weights

        directory = verified_weights(settings, settings.flash_dir)
    if directory is not None:
        stage, info = weights.load_stage(directory, settings.stage)
        return stage, info.version
    model = ActionModel(ModelConfig(n_stages=settings.n_stages, seed=settings.seed))
    return model.stage(settings.stage), weights.model_version(model)


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

    def load(version: str) -> Stage:
        from service.runtime.checkpoint_source import version_weights

        stage, info = weights.load_stage(
            version_weights(settings, flash_dir, version), settings.stage
        )
        if info.config.n_stages != n_stages:
            raise ValueError(
                f"version {version} has {info.config.n_stages} stages, this pipeline {n_stages}"
            )
        return stage

    follower = VersionFollower(
        open_routing_table(settings.etcd, settings.cluster), membership, servicer, load, n_stages
    )
    follower.start()
    return follower


def run(settings: ShardSettings) -> None:
    torch.set_num_threads(settings.torch_threads)
    torch.set_num_interop_threads(1)
    stage, version = load_stage(settings)
    if not 0 <= settings.stage < stage.cfg.n_stages:
        raise SystemExit(
            f"--stage {settings.stage} out of range: the model has {stage.cfg.n_stages} stages"
        )
    servicer = StageServicer(stage, version)

    def register(server: grpc.Server) -> list[str]:
        stage_pb2_grpc.add_StageServiceServicer_to_server(servicer, server)
        return [stage_pb2.DESCRIPTOR.services_by_name["StageService"].full_name]

    process = GrpcProcess(
        f"shard-{settings.stage}",
        settings.host,
        settings.port,
        settings.metrics_port,
        settings.grpc_workers,
        register,
    )
    address = settings.advertise_address or f"{settings.host}:{process.port}"
    servicer.replica_id = settings.replica_id or f"stage-{settings.stage}@{address}"
    log.info(
        "stage=%d replica=%s layers=%d..%d model=%s threads=%d",
        stage.index,
        servicer.replica_id,
        stage.layer_start,
        stage.layer_end,
        version,
        settings.torch_threads,
    )
    process.start(settings.ready_file)
    if settings.etcd is None:
        process.run_until_signal()
        return
    membership = open_replica_membership(
        settings.etcd,
        settings.cluster,
        ReplicaInfo(settings.stage, servicer.replica_id, address, version),
        settings.lease_ttl_s,
    )
    servicer.role = lambda: membership.role.value
    membership.start()
    follower = _follower(settings, servicer, membership, stage.cfg.n_stages)

    def step_down() -> None:
        if follower is not None:
            follower.stop()
        membership.stop()
        time.sleep(DRAIN_S)

    process.run_until_signal(before_stop=step_down)
