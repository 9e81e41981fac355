"""StageService: decode a batch, run this stage once over it, encode the results.

Numpy only (array_codec): whichever runtime runs the stage (torch or ONNX Runtime), the same
requests are refused with the same words, and the ONNX shard never imports torch."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from service.proto import array_codec, stage_pb2, stage_pb2_grpc, tensor_pb2
from service.runtime import metrics, tracing
from service.shard.stage_runtime import Array, StageRuntime, input_shape
from state.session import short_id

log = logging.getLogger(__name__)


class BadBatch(ValueError):
    """The request is malformed; the text names the item and what is wrong."""


class Refused(Exception):
    """A Forward this shard will not run: `code` is the status it answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Retiring:
    stage: StageRuntime
    version: str
    until: float  # time.monotonic()


class StageServicer(stage_pb2_grpc.StageServiceServicer):
    def __init__(self, stage: StageRuntime, model_version: str) -> None:
        self.stage, self.version = stage, model_version
        self.replica_id = ""  # set once the port is bound
        self.role: Callable[[], str] = lambda: "static"
        self._retiring: _Retiring | None = None
        self._versions = threading.Lock()  # stage, version and _retiring change together
        self._label = str(stage.index)
        metrics.SHARD_VERSION_REFUSALS.labels(self._label)  # exposed (as 0) before any refusal
        # The children of this stage's per-call metrics, looked up once rather than per call.
        self._latency = metrics.SHARD_FORWARD_LATENCY.labels(self._label)
        self._items_total = metrics.SHARD_FORWARD_ITEMS.labels(self._label)
        metrics.publish_model_versions([model_version])
        self._lock = threading.Lock()  # one batch at a time: the runtime's threads are set
        self._calls = 0
        self._items = 0

    def swap(self, stage: StageRuntime, model_version: str, retire_after_s: float) -> None:
        """Serve `model_version` from now on; the old version still answers for a while, so
        that steps already routed to it (before the change reached coordinators) finish."""
        if stage.index != self.stage.index:
            raise ValueError(f"stage {stage.index} cannot replace stage {self.stage.index}")
        with self._versions:
            old = _Retiring(self.stage, self.version, time.monotonic() + retire_after_s)
            self.stage, self.version, self._retiring = stage, model_version, old
        metrics.publish_model_versions([model_version])

    def _stage_for(self, version: str) -> StageRuntime | None:
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
        try:
            return self._forward(request)
        except Refused as exc:
            context.abort(exc.code, str(exc))

    def ForwardStream(  # noqa: N802 (gRPC naming)
        self,
        request_iterator: Iterator[stage_pb2.ForwardRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[stage_pb2.ForwardStreamReply]:
        """Forward, request after request, on one stream; a refusal is an error item."""
        for request in request_iterator:
            try:
                reply = self._forward(request)
            except Refused as exc:
                error = stage_pb2.ForwardError(code=exc.code.value[0], message=str(exc))
                yield stage_pb2.ForwardStreamReply(error=error)
                continue
            yield stage_pb2.ForwardStreamReply(reply=reply)

    def _forward(self, request: stage_pb2.ForwardRequest) -> stage_pb2.ForwardReply:
        """One batch, in a span under the coordinator's stage span (the request carries it)."""
        parent = tracing.extracted(request.trace_context) if request.trace_context else None
        with tracing.span(
            "actionmesh.shard.forward",
            {"actionmesh.stage": self.stage.index, "actionmesh.batch_size": len(request.items)},
            parent=parent,
        ):
            return self._computed(request)

    def _computed(self, request: stage_pb2.ForwardRequest) -> stage_pb2.ForwardReply:
        stage = self._stage_for(request.model_version)
        if stage is None:
            metrics.SHARD_VERSION_REFUSALS.labels(self._label).inc()
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stage {self.stage.index} serves model {self.version}, not {request.model_version}",
            )
        try:
            inputs, memory = _decode(stage, request)
        except (BadBatch, array_codec.TensorDecodeError) as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"stage {stage.index}: {exc}") from exc
        with self._lock:
            start = time.perf_counter()
            out = stage.run(inputs, memory, request.emit_action)
            compute_s = time.perf_counter() - start
            self._calls += 1
            self._items += len(request.items)
        self._latency.observe(compute_s)
        self._items_total.inc(len(request.items))
        results = [
            stage_pb2.StageResult(
                output=array_codec.encode(out.hidden[i]),
                state=array_codec.encode(out.memory[i]),
                action=array_codec.encode(out.action[i]) if out.action is not None else None,
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
        layer_start, layer_end = stage.cfg.layer_range(stage.index)
        return stage_pb2.InfoReply(
            stage=stage.index,
            n_stages=stage.cfg.n_stages,
            layer_start=layer_start,
            layer_end=layer_end,
            model_version=version,
            model_config_json=json.dumps(stage.cfg.model_dump(), sort_keys=True),
            forward_calls_total=calls,
            forward_items_total=items,
            replica_id=self.replica_id,
            role=self.role(),
        )


def _decode(stage: StageRuntime, request: stage_pb2.ForwardRequest) -> tuple[Array, Array]:
    if not request.items:
        raise BadBatch("empty batch")
    cfg = stage.cfg
    state_shape = [cfg.memory_tokens, cfg.d_model]
    inputs, memories = [], []
    for item in request.items:
        inputs.append(_float32(item, "input", item.input, input_shape(cfg, stage.index)))
        if item.HasField("state"):
            memories.append(_float32(item, "state", item.state, state_shape))
        else:
            memories.append(stage.fresh_memory())
    return np.stack(inputs), np.stack(memories)


def _float32(
    item: stage_pb2.StageItem, what: str, message: tensor_pb2.Tensor, shape: list[int]
) -> Array:
    got = array_codec.layout(message)  # a malformed message is a TensorDecodeError
    if got != shape or message.dtype != tensor_pb2.DTYPE_FLOAT32:
        raise BadBatch(
            f"session={short_id(item.session_id)} seq={item.seq}: {what} must be float32 {shape}, "
            f"got {array_codec.short_dtype_name(message.dtype)} {got}"
        )
    array: Array = array_codec.decode(message)  # type: ignore[assignment]
    return array
