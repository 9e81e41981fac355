"""StageService: decode a batch, run this stage once over it, encode the results."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import torch

from service.model.stage import Stage
from service.proto import stage_pb2, stage_pb2_grpc, tensor_codec
from service.runtime import metrics

log = logging.getLogger(__name__)


class BadBatch(ValueError):
    """The request is malformed; the text names the item and what is wrong."""


@dataclass(frozen=True)
class _Retiring:
    stage: Stage
    version: str
    until: float  # time.monotonic()


class StageServicer(stage_pb2_grpc.StageServiceServicer):
    def __init__(self, stage: Stage, model_version: str) -> None:
        self.stage, self.version = stage, model_version
        self.replica_id = ""  # set once the port is bound
        self.role: Callable[[], str] = lambda: "static"
        self._retiring: _Retiring | None = None
        self._versions = threading.Lock()  # stage, version and _retiring change together
        self._label = str(stage.index)
        metrics.SHARD_VERSION_REFUSALS.labels(self._label)  # exposed (as 0) before any refusal
        self._lock = threading.Lock()  # one batch at a time: torch threads are already set
        self._calls = 0
        self._items = 0

    def swap(self, stage: Stage, model_version: str, retire_after_s: float) -> None:
        """Serve `model_version` from now on; the old version still answers for a while, so
        that steps already routed to it (before the change reached coordinators) finish."""
        if stage.index != self.stage.index:
            raise ValueError(f"stage {stage.index} cannot replace stage {self.stage.index}")
        with self._versions:
            old = _Retiring(self.stage, self.version, time.monotonic() + retire_after_s)
            self.stage, self.version, self._retiring = stage, model_version, old

    def _stage_for(self, version: str) -> Stage | None:
        with self._versions:
            if not version or version == self.version:
                return self.stage
            retiring = self._retiring
            if retiring is not None and retiring.version == version:
                if time.monotonic() < retiring.until:
                    return retiring.stage
                self._retiring = None
            return None

    def Forward(  # noqa: N802 (gRPC naming)
        self, request: stage_pb2.ForwardRequest, context: grpc.ServicerContext
    ) -> stage_pb2.ForwardReply:
        stage = self._stage_for(request.model_version)
        if stage is None:
            metrics.SHARD_VERSION_REFUSALS.labels(self._label).inc()
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stage {self.stage.index} serves model {self.version}, not {request.model_version}",
            )
        try:
            inputs, memory = _decode(stage, request)
        except (BadBatch, tensor_codec.TensorDecodeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"stage {stage.index}: {exc}")
        with self._lock:
            start = time.perf_counter()
            with torch.no_grad():
                out, new_memory = stage(inputs, memory)
                actions = stage.action(out) if request.emit_action or stage.is_last else None
            compute_s = time.perf_counter() - start
            self._calls += 1
            self._items += len(request.items)
        metrics.SHARD_FORWARD_LATENCY.labels(self._label).observe(compute_s)
        metrics.SHARD_FORWARD_ITEMS.labels(self._label).inc(len(request.items))
        results = [
            stage_pb2.StageResult(
                output=tensor_codec.encode(out[i]),
                state=tensor_codec.encode(new_memory[i]),
                action=tensor_codec.encode(actions[i]) if actions is not None else None,
            )
            for i in range(len(request.items))
        ]
        return stage_pb2.ForwardReply(
            results=results,
            model_version=request.model_version or self.version,
            compute_ms=compute_s * 1e3,
        )

    def Info(  # noqa: N802 (gRPC naming)
        self, request: stage_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> stage_pb2.InfoReply:
        with self._lock:
            calls, items = self._calls, self._items
        with self._versions:
            stage, version = self.stage, self.version
        return stage_pb2.InfoReply(
            stage=stage.index,
            n_stages=stage.cfg.n_stages,
            layer_start=stage.layer_start,
            layer_end=stage.layer_end,
            model_version=version,
            model_config_json=json.dumps(stage.cfg.model_dump(), sort_keys=True),
            forward_calls_total=calls,
            forward_items_total=items,
            replica_id=self.replica_id,
            role=self.role(),
        )


def _decode(stage: Stage, request: stage_pb2.ForwardRequest) -> tuple[torch.Tensor, torch.Tensor]:
    if not request.items:
        raise BadBatch("empty batch")
    cfg = stage.cfg
    input_shape = [cfg.observation_dim] if stage.index == 0 else [cfg.tokens, cfg.d_model]
    state_shape = [cfg.memory_tokens, cfg.d_model]
    inputs, memories = [], []
    for item in request.items:
        x = tensor_codec.decode(item.input)
        _check(item, "input", x, input_shape)
        inputs.append(x)
        if item.HasField("state"):
            m = tensor_codec.decode(item.state)
            _check(item, "state", m, state_shape)
            memories.append(m)
        else:
            memories.append(stage.fresh_memory(1)[0])
    return torch.stack(inputs), torch.stack(memories)


def _check(item: stage_pb2.StageItem, what: str, t: torch.Tensor, shape: list[int]) -> None:
    if list(t.shape) != shape or t.dtype != torch.float32:
        raise BadBatch(
            f"session={item.session_id} seq={item.seq}: {what} must be float32 {shape}, "
            f"got {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
        )
