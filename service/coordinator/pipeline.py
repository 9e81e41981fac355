"""Stub wrappers: one long-lived channel per stage, and a batch pushed through them in order."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc
import torch

from service import metrics, tensor_codec
from service.errors import Unavailable
from service.grpc_server import MAX_MESSAGE_BYTES
from service.proto import stage_pb2, stage_pb2_grpc, tensor_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineInput:
    session_id: str
    seq: int
    observation: torch.Tensor
    states: list[bytes]  # per stage: an encoded Tensor, or b"" for a fresh session
    deadline: float  # time.monotonic() by which the step must be answered


@dataclass(frozen=True)
class PipelineOutput:
    action: torch.Tensor
    states: list[bytes]
    stage_ms: list[float]


class StageClient:
    """A channel to one stage's shard, opened once and reused for every call."""

    def __init__(self, stage: int, address: str) -> None:
        self.stage, self.address = stage, address
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = stage_pb2_grpc.StageServiceStub(self._channel)

    def info(self, timeout_s: float) -> stage_pb2.InfoReply:
        reply: stage_pb2.InfoReply = self._stub.Info(
            stage_pb2.InfoRequest(), timeout=timeout_s, wait_for_ready=True
        )
        return reply

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        try:
            reply: stage_pb2.ForwardReply = self._stub.Forward(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            raise Unavailable(
                f"stage {self.stage} at {self.address} failed: {code.name if code else exc}"
                f" ({exc.details() if isinstance(exc, grpc.Call) else ''}); the session was not"
                " advanced, retry the same seq"
            ) from exc
        return reply

    def close(self) -> None:
        self._channel.close()


class Pipeline:
    """Runs a batch of steps through every stage in order; any stage failure fails the batch."""

    def __init__(self, clients: list[StageClient], model_version: str, stage_timeout_s: float):
        self.clients, self.model_version, self.stage_timeout_s = (
            clients,
            model_version,
            stage_timeout_s,
        )

    def run(self, batch: list[PipelineInput]) -> list[PipelineOutput]:
        inputs = [tensor_codec.encode(item.observation) for item in batch]
        deadline = min(item.deadline for item in batch)
        states: list[list[bytes]] = [[] for _ in batch]
        stage_ms: list[float] = []
        last = len(self.clients) - 1
        reply = stage_pb2.ForwardReply()
        for k, client in enumerate(self.clients):
            request = stage_pb2.ForwardRequest(
                items=[
                    stage_pb2.StageItem(
                        session_id=item.session_id,
                        seq=item.seq,
                        input=inputs[i],
                        state=tensor_pb2.Tensor.FromString(item.states[k])
                        if item.states[k]
                        else None,
                    )
                    for i, item in enumerate(batch)
                ],
                emit_action=k == last,
                model_version=self.model_version,
            )
            timeout_s = min(self.stage_timeout_s, deadline - time.monotonic())
            if timeout_s <= 0:
                raise Unavailable(f"no time left before the step deadline for stage {k}")
            started = time.perf_counter()
            reply = client.forward(request, timeout_s)
            elapsed = time.perf_counter() - started
            metrics.STAGE_CALL_LATENCY.labels(str(k)).observe(elapsed)
            stage_ms.append(elapsed * 1e3)
            inputs = [result.output for result in reply.results]
            for i, result in enumerate(reply.results):
                states[i].append(result.state.SerializeToString())
        return [
            PipelineOutput(tensor_codec.decode(result.action), states[i], stage_ms)
            for i, result in enumerate(reply.results)
        ]

    def close(self) -> None:
        for client in self.clients:
            client.close()
