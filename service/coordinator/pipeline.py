"""A batch of steps pushed through every stage in order, each stage routed to a live replica."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from service.coordinator.routing.stage_router import StageRouter, StageUnavailable
from service.coordinator.step_errors import Unavailable
from service.proto import stage_pb2, tensor_codec, tensor_pb2
from service.runtime import metrics, tracing


@dataclass(frozen=True)
class PipelineInput:
    session_id: str
    seq: int
    observation: torch.Tensor
    states: list[bytes]  # per stage: an encoded Tensor, or b"" for a fresh session
    deadline: float  # time.monotonic() by which the step must be answered
    model_version: str  # every stage of the step runs this version
    depth: int = 0  # run stages 0..depth-1 and answer from the last one's head; 0: every stage


@dataclass(frozen=True)
class PipelineOutput:
    action: torch.Tensor
    states: list[bytes]
    stage_ms: list[float]  # per stage: the call as the coordinator timed it
    compute_ms: list[float]  # per stage: the compute inside the shard


class Pipeline:
    """Runs a batch through stages 0..n-1; a stage no replica can serve fails the batch."""

    def __init__(self, router: StageRouter, n_stages: int) -> None:
        self.router, self.n_stages = router, n_stages
        # Per stage, its call-latency histogram child: looked up once rather than per call.
        self._latency = [metrics.STAGE_CALL_LATENCY.labels(str(k)) for k in range(n_stages)]

    def _request(
        self, batch: list[PipelineInput], k: int, depth: int, inputs: list[tensor_pb2.Tensor]
    ) -> stage_pb2.ForwardRequest:
        """One stage call for a batch of steps of one model version and depth."""
        return stage_pb2.ForwardRequest(
            items=[
                stage_pb2.StageItem(
                    session_id=item.session_id,
                    seq=item.seq,
                    input=inputs[i],
                    state=tensor_pb2.Tensor.FromString(item.states[k]) if item.states[k] else None,
                )
                for i, item in enumerate(batch)
            ],
            emit_action=k == depth - 1,
            model_version=batch[0].model_version,
        )

    def run(self, batch: list[PipelineInput]) -> list[PipelineOutput | Exception]:
        """Steps of different versions (during a rolling update) or depths (early exits) go
        through apart, and one group's failure (a stage it needs is down) is its own."""
        kinds = {self._kind(item) for item in batch}
        if len(kinds) == 1:
            return list(self._run_one_kind(batch))
        outputs: dict[int, PipelineOutput | Exception] = {}
        for kind in sorted(kinds):
            part = [i for i, item in enumerate(batch) if self._kind(item) == kind]
            try:
                results = self._run_one_kind([batch[i] for i in part])
            except Unavailable as exc:
                outputs.update((i, exc) for i in part)
                continue
            outputs.update(zip(part, results, strict=True))
        return [outputs[i] for i in range(len(batch))]

    def _kind(self, item: PipelineInput) -> tuple[str, int]:
        return item.model_version, item.depth or self.n_stages

    def _run_one_kind(self, batch: list[PipelineInput]) -> list[PipelineOutput]:
        inputs = [tensor_codec.encode(item.observation) for item in batch]
        # The latest deadline: a step whose own deadline passes is answered DEADLINE_EXCEEDED by
        # its waiter; it must not cut the stage calls short for the others in its batch.
        deadline = max(item.deadline for item in batch)
        states: list[list[bytes]] = [[] for _ in batch]
        stage_ms: list[float] = []
        compute_ms: list[float] = []
        reply = stage_pb2.ForwardReply()
        depth = self._kind(batch[0])[1]
        for k in range(depth):
            started = time.perf_counter()
            request = self._request(batch, k, depth, inputs)
            with tracing.span("actionmesh.stage", {"actionmesh.stage": k}):
                tracing.inject(request.trace_context)  # read by the shard, whatever the call
                reply = self.router.forward(k, request, deadline)
            elapsed = time.perf_counter() - started
            self._latency[k].observe(elapsed)
            stage_ms.append(elapsed * 1e3)
            compute_ms.append(reply.compute_ms)
            inputs = [result.output for result in reply.results]
            for i, result in enumerate(reply.results):
                states[i].append(result.state.SerializeToString())
        try:
            actions = [tensor_codec.decode(result.action) for result in reply.results]
        except tensor_codec.TensorDecodeError as exc:  # a broken replica: that stage is out
            raise StageUnavailable(
                depth - 1, f"stage {depth - 1}: unreadable action: {exc}"
            ) from exc
        return [
            PipelineOutput(actions[i], states[i], stage_ms, compute_ms) for i in range(len(batch))
        ]
