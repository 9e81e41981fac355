"""How the coordinator reaches one replica of a stage (`StageTransport`), and its gRPC
implementation: one long-lived channel per replica, and Forward calls as messages on
long-lived streams (routing/forward_streams.py). The in-process implementation is
routing/in_process_stage.py."""

from __future__ import annotations

from typing import Protocol

import grpc

from service.coordinator.routing.forward_streams import ForwardStream, StreamFailed, StreamPool
from service.coordinator.step_errors import Unavailable
from service.proto import stage_pb2, stage_pb2_grpc
from service.runtime.grpc_server import MAX_MESSAGE_BYTES


class StageTimeout(Unavailable):
    """The call ran out of its time: the replica is slow or hung (or the time was short)."""


class VersionRefused(Unavailable):
    """The replica no longer (or not yet) serves the requested model version: a routing table
    a moment behind a rolling update, not a sick replica."""


class RequestRefused(Unavailable):
    """The replica refused the request itself as malformed (INVALID_ARGUMENT: say a stored
    state of the wrong shape): every replica would, so it is the request's fault, not the
    replica's."""


class StageTransport(Protocol):
    """One replica of one stage. Both calls raise Unavailable (StageTimeout, VersionRefused,
    RequestRefused), never a transport's own error."""

    stage: int
    address: str

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply: ...

    def info(self, timeout_s: float) -> stage_pb2.InfoReply: ...

    def close(self) -> None: ...


def unavailable_kind(code: grpc.StatusCode) -> type[Unavailable]:
    """What a failed Forward's status says about the replica."""
    return {
        grpc.StatusCode.DEADLINE_EXCEEDED: StageTimeout,
        grpc.StatusCode.FAILED_PRECONDITION: VersionRefused,
        grpc.StatusCode.INVALID_ARGUMENT: RequestRefused,
    }.get(code, Unavailable)


class StageClient:
    """StageTransport over gRPC."""

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
        self._streams = StreamPool(self._stub)
        self._unary_only = False

    def info(self, timeout_s: float) -> stage_pb2.InfoReply:
        try:
            reply: stage_pb2.InfoReply = self._stub.Info(
                stage_pb2.InfoRequest(), timeout=timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise Unavailable(f"stage {self.stage} at {self.address}: Info failed: {exc}") from exc
        return reply

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        """Raises Unavailable (never a raw gRPC error) when the call fails or times out."""
        stream = None if self._unary_only else self._streams.take()
        if stream is None:
            reply = self._forward_unary(request, timeout_s)
        else:
            reply = self._forward_on(stream, request, timeout_s)
        if len(reply.results) != len(request.items):
            raise Unavailable(
                f"stage {self.stage} at {self.address}: {len(reply.results)} results for "
                f"{len(request.items)} items"
            )
        return reply

    def _forward_on(
        self, stream: ForwardStream, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        try:
            answer = stream.exchange(request, timeout_s)
        except StreamFailed as exc:
            self._streams.discard(stream)
            cause = exc.cause
            if isinstance(cause, grpc.Call) and cause.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unary_only = True  # a shard from before ForwardStream
                return self._forward_unary(request, timeout_s)
            kind = StageTimeout if exc.timed_out else Unavailable
            what = "no reply in time" if exc.timed_out else _what(cause) if cause else str(exc)
            raise kind(f"stage {self.stage} at {self.address}: {what}") from exc
        if stream.cancelled:
            self._streams.discard(stream)
        else:
            self._streams.give_back(stream)
        if answer.HasField("error"):
            code = grpc.StatusCode.UNKNOWN
            for status in grpc.StatusCode:
                if status.value[0] == answer.error.code:
                    code = status
            kind = unavailable_kind(code)
            raise kind(
                f"stage {self.stage} at {self.address}: {code.name} ({answer.error.message})"
            )
        reply: stage_pb2.ForwardReply = answer.reply
        return reply

    def _forward_unary(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        try:
            reply: stage_pb2.ForwardReply = self._stub.Forward(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            kind = unavailable_kind(exc.code()) if isinstance(exc, grpc.Call) else Unavailable
            raise kind(f"stage {self.stage} at {self.address}: {_what(exc)}") from exc
        return reply

    def close(self) -> None:
        self._streams.close()
        self._channel.close()


def _what(exc: grpc.RpcError) -> str:
    return f"{exc.code().name} ({exc.details()})" if isinstance(exc, grpc.Call) else str(exc)
