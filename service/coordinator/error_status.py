"""How a step error reaches the robot: one status code and reason per kind, and the rich status
(google.rpc.Status with ErrorInfo, RetryInfo, BadRequest) that any gRPC stack can parse.

Unary calls carry the rich status in the standard trailer `grpc-status-details-bin` (what
grpcio-status, grpc-java's StatusProto and grpc-go's status.FromError read), beside the older
`actionmesh-*` trailers kept for one release; stream error items carry it in `StepError.status`.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from service.coordinator.step_errors import (
    ActionmeshError,
    DeadlineExceeded,
    Draining,
    InvalidInput,
    NotAuthenticated,
    NotEnoughReplicas,
    Overloaded,
    PermissionDenied,
    RateLimited,
    SeqConflict,
    SessionNotFound,
    StoreUnreachable,
    TooManySessions,
    Unavailable,
)

DETAILS_KEY = "grpc-status-details-bin"
ERROR_KEY = "actionmesh-error"
CURRENT_SEQ_KEY = "actionmesh-current-seq"
RETRY_AFTER_KEY = "actionmesh-retry-after-s"
# ErrorInfo.domain: the service the reasons belong to.
DOMAIN = "actionmesh.v1.SessionService"

# Each error's status code and reason (the code alone is shared by several kinds). The reason
# is lower_snake in the older trailers and StepError.reason, UPPER_SNAKE in ErrorInfo.
_STATUS: dict[type[ActionmeshError], tuple[grpc.StatusCode, str]] = {
    InvalidInput: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
    SessionNotFound: (grpc.StatusCode.NOT_FOUND, "session_not_found"),
    SeqConflict: (grpc.StatusCode.FAILED_PRECONDITION, "seq_conflict"),
    NotEnoughReplicas: (grpc.StatusCode.FAILED_PRECONDITION, "not_enough_replicas"),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, "unavailable"),
    Draining: (grpc.StatusCode.UNAVAILABLE, "draining"),
    StoreUnreachable: (grpc.StatusCode.UNAVAILABLE, "store_unavailable"),
    DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded"),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "shed"),
    NotAuthenticated: (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, "permission_denied"),
    RateLimited: (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited"),
    TooManySessions: (grpc.StatusCode.RESOURCE_EXHAUSTED, "session_limit"),
}


def _status(exc: ActionmeshError) -> tuple[grpc.StatusCode, str]:
    """By the nearest class in `_STATUS` (a StageUnavailable is an Unavailable)."""
    kind = next((k for k in type(exc).__mro__ if k in _STATUS), None)
    return _STATUS[kind] if kind is not None else (grpc.StatusCode.INTERNAL, "internal")


def status_of(exc: ActionmeshError) -> grpc.StatusCode:
    return _status(exc)[0]


def reason_of(exc: ActionmeshError) -> str:
    return _status(exc)[1]


def current_seq_of(exc: ActionmeshError) -> int | None:
    return exc.current_seq if isinstance(exc, SeqConflict) else None


def retry_after_of(exc: ActionmeshError) -> float | None:
    return exc.retry_after_s if isinstance(exc, Overloaded) else None


def rich_status(exc: ActionmeshError, message: str) -> status_pb2.Status:
    """The error as a google.rpc.Status: ErrorInfo always, RetryInfo for a shed step,
    BadRequest for bad input that names its field."""
    info = error_details_pb2.ErrorInfo(reason=reason_of(exc).upper(), domain=DOMAIN)
    if (seq := current_seq_of(exc)) is not None:
        info.metadata["current_seq"] = str(seq)
    details: list[Message] = [info]
    if (retry_after_s := retry_after_of(exc)) is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(exc, InvalidInput) and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=message
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return status_pb2.Status(code=status_of(exc).value[0], message=message, details=packed)


def trailing_metadata(exc: ActionmeshError, message: str) -> tuple[tuple[str, str | bytes], ...]:
    """A unary error's trailers: the rich status and the older actionmesh-* keys."""
    metadata: list[tuple[str, str | bytes]] = [
        (DETAILS_KEY, rich_status(exc, message).SerializeToString()),
        (ERROR_KEY, reason_of(exc)),
    ]
    if (seq := current_seq_of(exc)) is not None:
        metadata.append((CURRENT_SEQ_KEY, str(seq)))
    if (retry_after_s := retry_after_of(exc)) is not None:
        metadata.append((RETRY_AFTER_KEY, f"{retry_after_s:.3f}"))
    return tuple(metadata)
