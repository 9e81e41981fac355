"""StageService: decode a batch, run this stage once over it, encode the results."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import grpc
import torch

from service import metrics, tensor_codec
from service.model.stage import Stage
from service.proto import stage_pb2, stage_pb2_grpc

log = logging.getLogger(__name__)


class BadBatch(ValueError):
    """The request is malformed; the text names the item and what is wrong."""


class StageServicer(stage_pb2_grpc.StageServiceServicer):
    def __init__(self, stage: Stage, model_version: str) -> None:
        self.stage, self.version = stage, model_version
        self.replica_id = ""  # set once the port is bound
        self.role: Callable[[], str] = lambda: "static"
        cfg = stage.cfg
        self._input_shape = [cfg.observation_dim] if stage.index == 0 else [cfg.tokens, cfg.d_model]
        self._state_shape = [cfg.memory_tokens, cfg.d_model]
        self._label = str(stage.index)
        self._lock = threading.Lock()  # one batch at a time: torch threads are already set
        self._calls = 0
        self._items = 0

    def Forward(  # noqa: N802 (gRPC naming)
        self, request: stage_pb2.ForwardRequest, context: grpc.ServicerContext
    ) -> stage_pb2.ForwardReply:
        if request.model_version and request.model_version != self.version:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stage {self.stage.index} serves model {self.version}, not {request.model_version}",
            )
        try:
            inputs, memory = self._decode(request)
        except (BadBatch, tensor_codec.TensorDecodeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"stage {self.stage.index}: {exc}")
        with self._lock:
            start = time.perf_counter()
            with torch.no_grad():
                out, new_memory = self.stage(inputs, memory)
                actions = (
                    self.stage.action(out) if request.emit_action or self.stage.is_last else None
                )
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
            results=results, model_version=self.version, compute_ms=compute_s * 1e3
        )

    def _decode(self, request: stage_pb2.ForwardRequest) -> tuple[torch.Tensor, torch.Tensor]:
        if not request.items:
            raise BadBatch("empty batch")
        inputs, memories = [], []
        for item in request.items:
            x = tensor_codec.decode(item.input)
            self._check(item, "input", x, self._input_shape)
            inputs.append(x)
            if item.HasField("state"):
                m = tensor_codec.decode(item.state)
                self._check(item, "state", m, self._state_shape)
                memories.append(m)
            else:
                memories.append(self.stage.fresh_memory(1)[0])
        return torch.stack(inputs), torch.stack(memories)

    @staticmethod
    def _check(item: stage_pb2.StageItem, what: str, t: torch.Tensor, shape: list[int]) -> None:
        if list(t.shape) != shape or t.dtype != torch.float32:
            raise BadBatch(
                f"session={item.session_id} seq={item.seq}: {what} must be float32 {shape}, "
                f"got {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
            )

    def Info(  # noqa: N802 (gRPC naming)
        self, request: stage_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> stage_pb2.InfoReply:
        with self._lock:
            calls, items = self._calls, self._items
        return stage_pb2.InfoReply(
            stage=self.stage.index,
            n_stages=self.stage.cfg.n_stages,
            layer_start=self.stage.layer_start,
            layer_end=self.stage.layer_end,
            model_version=self.version,
            model_config_json=json.dumps(self.stage.cfg.model_dump(), sort_keys=True),
            forward_calls_total=calls,
            forward_items_total=items,
            replica_id=self.replica_id,
            role=self.role(),
        )
