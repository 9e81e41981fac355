"""The step reply codec: the bytes stored with a commit are the bytes a retry gets back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actionmesh_client.proto_names import serve_mode_value
from fallback.serve_mode import ServeMode
from service.proto import session_pb2, tensor_codec


@dataclass(frozen=True)
class StepOutcome:
    session_id: str
    seq: int
    action: torch.Tensor
    serve_mode: ServeMode
    confidence: float
    model_version: str
    queue_ms: float
    stages_ms: float
    total_ms: float
    stage_ms: list[float]
    stage_compute_ms: list[float]
    load_ms: float
    observation_timestamp_s: float
    batch_size: int
    exit_stage: int = 0
    replayed_steps: int = 0
    state_reset: bool = False
    observation_id: int = 0
    first_action_tick: int = 0


def encode(outcome: StepOutcome) -> bytes:
    reply = session_pb2.StepReply(
        session_id=outcome.session_id,
        seq=outcome.seq,
        action=tensor_codec.encode(outcome.action),
        serve_mode=serve_mode_value(outcome.serve_mode.value),
        exit_stage=outcome.exit_stage,
        confidence=outcome.confidence,
        model_version=outcome.model_version,
        timing=session_pb2.StepTiming(
            queue_ms=outcome.queue_ms,
            stages_ms=outcome.stages_ms,
            total_ms=outcome.total_ms,
            stage_ms=outcome.stage_ms,
            stage_compute_ms=outcome.stage_compute_ms,
            load_ms=outcome.load_ms,
        ),
        observation_timestamp_s=outcome.observation_timestamp_s,
        batch_size=outcome.batch_size,
        replayed_steps=outcome.replayed_steps,
        state_reset=outcome.state_reset,
        observation_id=outcome.observation_id,
        first_action_tick=outcome.first_action_tick,
    )
    return reply.SerializeToString(deterministic=True)
