"""What a failed client call raises: the caller's typed errors, or a RetryableFailure that
the client resends (the same seq, maybe to another coordinator)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
CURRENT_SEQ_KEY = "actionmesh-current-seq"
ERROR_KEY = "actionmesh-error"  # set by the coordinator on every error it returns
RETRY_AFTER_KEY = "actionmesh-retry-after-s"  # set on a shed step
STEP_TIMEOUT_KEY = "actionmesh-step-timeout-s"  # sent when a stream opens: each step's deadline
DETAILS_KEY = "grpc-status-details-bin"  # a google.rpc.Status: the error's ErrorInfo and the rest
# On a step a draining coordinator answered: send the next call to another coordinator.
DRAINING_KEY = "actionmesh-draining"


class ActionMeshClientError(Exception):
    """Base of the client's errors: `code` is the gRPC status name, the message the server's."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidObservation(ActionMeshClientError):
    """The observation was refused (shape, dtype, NaN/Inf, size), or another field of the
    request: fix it, do not resend it. `fields` names the request fields at fault."""

    def __init__(self, message: str, code: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message, code)
        self.fields = fields


class SessionNotFound(ActionMeshClientError):
    """Unknown, closed or expired session: open a new one."""


class SeqConflict(ActionMeshClientError):
    """The seq was neither the next nor the last: something else steps this session."""

    def __init__(self, message: str, current_seq: int) -> None:
        super().__init__(message, "FAILED_PRECONDITION")
        self.current_seq = current_seq


class ServiceUnavailable(ActionMeshClientError):
    """Every attempt failed. The step may or may not have been committed: the next step()
    finds out (a stored reply to the earlier observation, told apart by its observation_id) and
    steps again."""

    def __init__(self, message: str, code: str, attempts: int, addresses: list[str]) -> None:
        super().__init__(message, code)
        self.attempts, self.addresses = attempts, addresses


class StepShed(ActionMeshClientError):
    """RESOURCE_EXHAUSTED: the coordinator shed this step (overload, or nothing could answer
    in time); the session was not advanced. Send the same seq again after `retry_after_s`, or
    a newer observation: a control loop usually prefers the fresher one."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, "RESOURCE_EXHAUSTED")
        self.retry_after_s = retry_after_s


# The UNAVAILABLE reasons that say "this coordinator cannot serve you now, another may": none
# (gRPC itself could not reach it), draining, or it could not reach the session store in time.
LEAVE_AT_ONCE = ("", "draining", "store_unavailable")


class RetryableFailure(Exception):
    """One attempt failed in a way worth resending the same request (maybe elsewhere);
    `unreachable`: resend it elsewhere at once (gRPC could not reach the coordinator, it is
    draining, or it cannot reach the session store)."""

    def __init__(self, code: str, message: str, unreachable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.unreachable = code, unreachable


@dataclass(frozen=True)
class ErrorDetails:
    """What a coordinator says of an error beyond its code and message; empty when gRPC itself
    failed to reach one."""

    reason: str = ""  # lower_snake: seq_conflict, shed, invalid_input, ...
    current_seq: int | None = None  # the session's seq, for seq_conflict
    retry_after_s: float = 0.0  # for shed and rate_limited
    fields: tuple[str, ...] = ()  # the request fields at fault, for invalid_input


def details_of(status: status_pb2.Status) -> ErrorDetails:
    """From a google.rpc.Status's ErrorInfo, RetryInfo and BadRequest."""
    info = error_details_pb2.ErrorInfo()
    retry = error_details_pb2.RetryInfo()
    bad = error_details_pb2.BadRequest()
    for detail in status.details:
        for message in (info, retry, bad):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    seq = info.metadata.get("current_seq", "")
    return ErrorDetails(
        reason=info.reason.lower(),
        current_seq=int(seq) if seq.isdigit() else None,
        retry_after_s=retry.retry_delay.ToNanoseconds() / 1e9,
        fields=tuple(v.field for v in bad.field_violations),
    )


def _details_of_trailers(metadata: Mapping[str, str | bytes]) -> ErrorDetails:
    """From the rich status when it is there, else from the older actionmesh-* trailers."""
    packed = metadata.get(DETAILS_KEY)
    if isinstance(packed, bytes):
        return details_of(status_pb2.Status.FromString(packed))
    seq = str(metadata.get(CURRENT_SEQ_KEY, ""))
    return ErrorDetails(
        reason=str(metadata.get(ERROR_KEY, "")),
        current_seq=int(seq) if seq.isdigit() else None,
        retry_after_s=float(str(metadata.get(RETRY_AFTER_KEY, "0") or 0)),
    )


def failure(code: str, message: str, details: ErrorDetails) -> Exception:
    """What a call that failed with status `code` raises: RetryableFailure, or the caller's typed error."""
    if code in RETRYABLE:
        unreachable = code == "UNAVAILABLE" and details.reason in LEAVE_AT_ONCE
        return RetryableFailure(code, message, unreachable=unreachable)
    if code == "INVALID_ARGUMENT":
        return InvalidObservation(message, code, details.fields)
    if code == "NOT_FOUND":
        return SessionNotFound(message, code)
    if details.reason == "seq_conflict" and details.current_seq is not None:
        return SeqConflict(message, details.current_seq)
    if details.reason == "shed":
        return StepShed(message, details.retry_after_s)
    return ActionMeshClientError(message, code)


def rpc_failure(exc: grpc.RpcError) -> Exception:
    metadata = {m.key: m.value for m in exc.trailing_metadata() or ()}
    return failure(exc.code().name, exc.details() or "", _details_of_trailers(metadata))
