"""Start a shard: load this stage's weights, set torch threads, serve until a signal."""

from __future__ import annotations

import logging

import grpc
import torch

from service.config import ShardSettings
from service.grpc_server import GrpcProcess
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.stage import Stage
from service.proto import stage_pb2, stage_pb2_grpc
from service.shard.servicer import StageServicer

log = logging.getLogger(__name__)


def load_stage(settings: ShardSettings) -> tuple[Stage, str]:
    """This shard's stage and the model version it advertises."""
    if settings.weights_dir is not None:
        stage, info = weights.load_stage(settings.weights_dir, settings.stage)
        return stage, info.version
    model = ActionModel(ModelConfig(n_stages=settings.n_stages, seed=settings.seed))
    return model.stage(settings.stage), weights.model_version(model)


def run(settings: ShardSettings) -> None:
    torch.set_num_threads(settings.torch_threads)
    torch.set_num_interop_threads(1)
    stage, version = load_stage(settings)
    if not 0 <= settings.stage < stage.cfg.n_stages:
        raise SystemExit(
            f"--stage {settings.stage} out of range: the model has {stage.cfg.n_stages} stages"
        )
    replica_id = settings.replica_id or f"stage-{settings.stage}@{settings.host}:{settings.port}"
    servicer = StageServicer(stage, version, replica_id)

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
    log.info(
        "stage=%d layers=%d..%d model=%s threads=%d replica=%s",
        stage.index,
        stage.layer_start,
        stage.layer_end,
        version,
        settings.torch_threads,
        replica_id,
    )
    process.start(settings.ready_file)
    process.run_until_signal()
