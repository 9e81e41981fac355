"""What a failed client call raises: the caller's typed errors, or a RetryableFailure that
the client resends (the same seq, maybe to another coordinator)."""

from __future__ import annotations

import grpc

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
CURRENT_SEQ_KEY = "actionmesh-current-seq"
ERROR_KEY = "actionmesh-error"  # set by the coordinator on every error it returns
RETRY_AFTER_KEY = "actionmesh-retry-after-s"  # set on a shed step
STEP_TIMEOUT_KEY = "actionmesh-step-timeout-s"  # sent when a stream opens: each step's deadline


class ActionMeshClientError(Exception):
    """Base of the client's errors: `code` is the gRPC status name, the message the server's."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidObservation(ActionMeshClientError):
    """The observation was refused (shape, dtype, NaN/Inf, size): fix it, do not resend it."""


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


class RetryableFailure(Exception):
    """One attempt failed in a way worth resending the same request (maybe elsewhere)."""

    def __init__(self, code: str, message: str, unreachable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.unreachable = code, unreachable


def failure(
    code: str,
    message: str,
    reason: str,
    current_seq: int | None = None,
    retry_after_s: float = 0.0,
) -> Exception:
    """What a call that failed with status `code` raises: RetryableFailure, or the caller's typed error.

    `reason` is the coordinator's error kind; empty when gRPC itself failed to reach one.
    """
    if code in RETRYABLE:
        return RetryableFailure(code, message, unreachable=code == "UNAVAILABLE" and not reason)
    if code == "INVALID_ARGUMENT":
        return InvalidObservation(message, code)
    if code == "NOT_FOUND":
        return SessionNotFound(message, code)
    if reason == "seq_conflict" and current_seq is not None:
        return SeqConflict(message, current_seq)
    if reason == "shed":
        return StepShed(message, retry_after_s)
    return ActionMeshClientError(message, code)


def rpc_failure(exc: grpc.RpcError) -> Exception:
    metadata = {m.key: m.value for m in exc.trailing_metadata() or ()}
    seq = metadata.get(CURRENT_SEQ_KEY)
    reason = str(metadata.get(ERROR_KEY, ""))
    retry_after = float(str(metadata.get(RETRY_AFTER_KEY, "0") or 0))
    return failure(
        exc.code().name, exc.details() or "", reason, int(seq) if seq else None, retry_after
    )
