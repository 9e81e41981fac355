"""SessionService's gRPC method handlers, with request parsing that cannot fail.

gRPC's generated registration parses requests itself: bytes that do not parse become INTERNAL
with a logged traceback, before the servicer sees anything. Here a request that does not parse
reaches the servicer as `Malformed`, which answers INVALID_ARGUMENT (on a stream: an error
item, and the stream goes on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from service.proto import session_pb2

SERVICE = "actionmesh.v1.SessionService"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Malformed:
    """Request bytes that do not parse as the method's request message."""

    size: int
    error: str

    def describe(self) -> str:
        return f"the request ({self.size} bytes) does not parse: {self.error[:200]}"


def lenient(message_type: type[M]) -> Callable[[bytes], M | Malformed]:
    def parse(data: bytes) -> M | Malformed:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Malformed(len(data), str(exc))

    return parse


def add_to_server(servicer: Any, server: grpc.Server) -> None:
    """Register `servicer` (a SessionServicer) for every SessionService method."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    pb = session_pb2
    handlers = {
        "OpenSession": unary(
            servicer.OpenSession,
            request_deserializer=lenient(pb.OpenSessionRequest),
            response_serializer=pb.OpenSessionReply.SerializeToString,
        ),
        "Step": unary(  # the servicer answers the stored reply's bytes as they are
            servicer.Step,
            request_deserializer=lenient(pb.StepRequest),
            response_serializer=None,
        ),
        "StreamSteps": stream(
            servicer.StreamSteps,
            request_deserializer=lenient(pb.StepRequest),
            response_serializer=pb.StreamStepsReply.SerializeToString,
        ),
        "GetSession": unary(
            servicer.GetSession,
            request_deserializer=lenient(pb.GetSessionRequest),
            response_serializer=pb.SessionInfo.SerializeToString,
        ),
        "CloseSession": unary(
            servicer.CloseSession,
            request_deserializer=lenient(pb.CloseSessionRequest),
            response_serializer=pb.CloseSessionReply.SerializeToString,
        ),
        "Drain": unary(
            servicer.Drain,
            request_deserializer=lenient(pb.DrainRequest),
            response_serializer=pb.DrainReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]
