"""How the coordinator reaches one replica of a stage (`StageTransport`), and its gRPC
implementation: one long-lived channel per replica, and Forward calls as messages on
long-lived streams (routing/forward_streams.py). The in-process implementation is
routing/in_process_stage.py."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import grpc

from actionmesh_client.client_tls import ClientTls, ReloadingChannel
from service.coordinator.routing.forward_streams import ForwardStream, StreamFailed, StreamPool
from service.coordinator.step_errors import Unavailable
from service.proto import stage_pb2, stage_pb2_grpc
from service.runtime import tracing
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


KEEPALIVE_MS = 1000


class StageClient:
    """StageTransport over gRPC."""

    def __init__(self, stage: int, address: str, tls: ClientTls | None = None) -> None:
        """tls: mutual TLS to the shard (tls.client_tls), None: plaintext. A client
        certificate rotated on disk is presented from the next reconnection on."""
        self.stage, self.address = stage, address
        self._channel = ReloadingChannel(
            address,
            tls,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # Reach a replica again within a second once its host is back (a restart, a
                # healed partition), not after gRPC's default backoff and 20 s connect timeout.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                # A connection whose packets are dropped (a partition) is given up within
                # about 2 s, not after TCP's retransmissions: its streams would time out on
                # it long after the link is back. Servers allow these pings (grpc_server.py).
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_MS),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self._lock = threading.Lock()
        self._made_on, self._stub, self._streams = self._on(self._channel.current())
        self._unary_only = False

    @staticmethod
    def _on(channel: grpc.Channel) -> tuple[grpc.Channel, Any, StreamPool]:
        # Client spans of unary calls when tracing is on (ForwardStream messages carry theirs).
        stub = stage_pb2_grpc.StageServiceStub(tracing.traced_channel(channel))
        return channel, stub, StreamPool(stub)

    def _current(self) -> tuple[Any, StreamPool]:
        """The stub and stream pool on the current channel (new ones after a certificate
        rotation: the old pool's idle streams are closed)."""
        channel = self._channel.current()
        with self._lock:
            if channel is not self._made_on:
                self._streams.close()
                self._made_on, self._stub, self._streams = self._on(channel)
            return self._stub, self._streams

    def info(self, timeout_s: float) -> stage_pb2.InfoReply:
        stub, _ = self._current()
        try:
            reply: stage_pb2.InfoReply = stub.Info(
                stage_pb2.InfoRequest(), timeout=timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise Unavailable(f"stage {self.stage} at {self.address}: Info failed: {exc}") from exc
        return reply

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        """Raises Unavailable (never a raw gRPC error) when the call fails or times out."""
        stub, streams = self._current()
        stream = None if self._unary_only else streams.take()
        if stream is None:
            reply = self._forward_unary(stub, request, timeout_s)
        else:
            reply = self._forward_on(stub, streams, stream, request, timeout_s)
        if len(reply.results) != len(request.items):
            raise Unavailable(
                f"stage {self.stage} at {self.address}: {len(reply.results)} results for "
                f"{len(request.items)} items"
            )
        return reply

    def _forward_on(
        self,
        stub: Any,
        streams: StreamPool,
        stream: ForwardStream,
        request: stage_pb2.ForwardRequest,
        timeout_s: float,
    ) -> stage_pb2.ForwardReply:
        try:
            answer = stream.exchange(request, timeout_s)
        except StreamFailed as exc:
            streams.discard(stream)
            cause = exc.cause
            if isinstance(cause, grpc.Call) and cause.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unary_only = True  # a shard from before ForwardStream
                return self._forward_unary(stub, request, timeout_s)
            kind = StageTimeout if exc.timed_out else Unavailable
            what = "no reply in time" if exc.timed_out else _what(cause) if cause else str(exc)
            raise kind(f"stage {self.stage} at {self.address}: {what}") from exc
        if stream.cancelled:
            streams.discard(stream)
        else:
            streams.give_back(stream)
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
        self, stub: Any, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        try:
            reply: stage_pb2.ForwardReply = stub.Forward(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            kind = unavailable_kind(exc.code()) if isinstance(exc, grpc.Call) else Unavailable
            raise kind(f"stage {self.stage} at {self.address}: {_what(exc)}") from exc
        return reply

    def close(self) -> None:
        with self._lock:
            self._streams.close()
        self._channel.close()


def _what(exc: grpc.RpcError) -> str:
    return f"{exc.code().name} ({exc.details()})" if isinstance(exc, grpc.Call) else str(exc)
