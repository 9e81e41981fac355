"""SessionService: decode, call one engine method, map errors to status codes in one place."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import TypeVar

import grpc
import torch
from google.protobuf.message import Message

from fallback.priority import Priority
from service.coordinator.engine import SessionEngine, StepAnswer
from service.coordinator.session_handlers import Malformed
from service.coordinator.step_errors import (
    ActionmeshError,
    DeadlineExceeded,
    InvalidInput,
    NotEnoughReplicas,
    Overloaded,
    SeqConflict,
    SessionNotFound,
    Unavailable,
)
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime import metrics

log = logging.getLogger(__name__)

MAX_ID_CHARS = 128  # session and client ids (ours are 24 characters)
# What a status message may carry: far below gRPC's metadata limits, so the robot gets the
# real status and never "metadata size exceeds hard limit".
MAX_STATUS_CHARS = 1000

R = TypeVar("R", bound=Message)

ERROR_KEY = "actionmesh-error"
CURRENT_SEQ_KEY = "actionmesh-current-seq"
RETRY_AFTER_KEY = "actionmesh-retry-after-s"
STEP_TIMEOUT_KEY = "actionmesh-step-timeout-s"  # a stream's per-step deadline, from the robot
# Sent by a caller (any value) that wants, in the trailing metadata under the same key, where a
# unary step's time went in the coordinator: "handler_ms=..;load_ms=..;encode_ms=..;commit_ms=..".
SERVER_TIMING_KEY = "actionmesh-server-timing"

# Each error's status code and reason (the code alone is shared by several kinds).
_STATUS: dict[type[ActionmeshError], tuple[grpc.StatusCode, str]] = {
    InvalidInput: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
    SessionNotFound: (grpc.StatusCode.NOT_FOUND, "session_not_found"),
    SeqConflict: (grpc.StatusCode.FAILED_PRECONDITION, "seq_conflict"),
    NotEnoughReplicas: (grpc.StatusCode.FAILED_PRECONDITION, "not_enough_replicas"),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, "unavailable"),
    DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded"),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "shed"),
}


def _status(exc: ActionmeshError) -> tuple[grpc.StatusCode, str]:
    """By the nearest class in `_STATUS` (a StageUnavailable is an Unavailable)."""
    kind = next((k for k in type(exc).__mro__ if k in _STATUS), None)
    return _STATUS[kind] if kind is not None else (grpc.StatusCode.INTERNAL, "internal")


def status_of(exc: ActionmeshError) -> grpc.StatusCode:
    return _status(exc)[0]


def reason_of(exc: ActionmeshError) -> str:
    return _status(exc)[1]


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(self, engine: SessionEngine, step_timeout_s: float, max_observation_bytes: int):
        self.engine, self.step_timeout_s = engine, step_timeout_s
        self.max_observation_bytes = max_observation_bytes
        cfg = engine.model
        self.action_spec = session_pb2.ActionSpec(
            observation_dim=cfg.observation_dim, horizon=cfg.horizon, joints=cfg.joints
        )

    def OpenSession(  # noqa: N802 (gRPC naming)
        self,
        request: session_pb2.OpenSessionRequest | Malformed,
        context: grpc.ServicerContext,
    ) -> session_pb2.OpenSessionReply:
        try:
            request = _checked(request)
            opened = self.engine.open(request.ttl_s, request.client_id, request.wait_replicas)
        except ActionmeshError as exc:
            _abort(context, exc)
        return session_pb2.OpenSessionReply(
            session_id=opened.session_id,
            ttl_s=opened.ttl_s,
            model_version=opened.model_version,
            action_spec=self.action_spec,
            wait_replicas=opened.wait_replicas,
        )

    def Step(  # noqa: N802
        self, request: session_pb2.StepRequest | Malformed, context: grpc.ServicerContext
    ) -> bytes:
        """The serialized StepReply, as stored with the commit (session_handlers sends bytes)."""
        started = time.perf_counter()
        try:
            answer = self._step(request, context.time_remaining())
        except ActionmeshError as exc:
            _abort(context, exc)
        if any(key == SERVER_TIMING_KEY for key, _ in context.invocation_metadata() or ()):
            context.set_trailing_metadata(((SERVER_TIMING_KEY, _server_timing(answer, started)),))
        return answer.reply

    def StreamSteps(  # noqa: N802
        self,
        request_iterator: Iterator[session_pb2.StepRequest | Malformed],
        context: grpc.ServicerContext,
    ) -> Iterator[session_pb2.StreamStepsReply]:
        try:
            budget_s = _stream_step_timeout_s(context)
        except InvalidInput as exc:
            _abort(context, exc)
        for request in request_iterator:
            seq = 0 if isinstance(request, Malformed) else request.seq
            try:  # each step within its own budget and within what is left of the stream's
                answer = self._step(request, _shortest(budget_s, context.time_remaining()))
            except ActionmeshError as exc:
                current = exc.current_seq if isinstance(exc, SeqConflict) else 0
                error = session_pb2.StepError(
                    code=status_of(exc).value[0],
                    message=_bounded(str(exc)),
                    current_seq=current,
                    reason=reason_of(exc),
                    retry_after_s=exc.retry_after_s if isinstance(exc, Overloaded) else 0.0,
                )
                yield session_pb2.StreamStepsReply(seq=seq, error=error)
                continue
            reply = session_pb2.StepReply.FromString(answer.reply)
            yield session_pb2.StreamStepsReply(seq=seq, reply=reply)

    def GetSession(  # noqa: N802
        self, request: session_pb2.GetSessionRequest | Malformed, context: grpc.ServicerContext
    ) -> session_pb2.SessionInfo:
        try:
            request = _checked(request)
            summary = self.engine.get(request.session_id)
        except ActionmeshError as exc:
            _abort(context, exc)
        record = summary.record
        return session_pb2.SessionInfo(
            session_id=record.session_id,
            seq=record.seq,
            ttl_left_s=summary.ttl_left_s,
            model_version=record.model_version,
            client_id=record.client_id,
            observation_log_depth=summary.log_depth,
            action_spec=self.action_spec,
            wait_replicas=record.wait_replicas,
            stage_states=[
                session_pb2.StageStateInfo(stage=k, seq=s.seq)
                for k, s in sorted(record.stage_states.items())
            ],
        )

    def CloseSession(  # noqa: N802
        self, request: session_pb2.CloseSessionRequest | Malformed, context: grpc.ServicerContext
    ) -> session_pb2.CloseSessionReply:
        try:
            request = _checked(request)
            closed = self.engine.close(request.session_id)
        except ActionmeshError as exc:
            _abort(context, exc)
        return session_pb2.CloseSessionReply(closed=closed)

    def _step(
        self, request: session_pb2.StepRequest | Malformed, time_remaining: float | None
    ) -> StepAnswer:
        """One step with its metrics; raises ActionmeshError for the caller to map."""
        started = time.perf_counter()
        what = "malformed request" if isinstance(request, Malformed) else f"seq={request.seq}"
        try:
            request = _checked(request)
            what = f"session={request.session_id} seq={request.seq}"
            observation = self._observation(request)
            # A call without a deadline reports a huge time_remaining; step_timeout_s caps it.
            budget = self.step_timeout_s
            if time_remaining is not None:
                budget = min(budget, time_remaining)
            answer = self.engine.step(
                request.session_id,
                request.seq,
                observation,
                request.timestamp_s,
                time.monotonic() + budget,
                _priority(request.priority),
            )
        except ActionmeshError as exc:
            code = status_of(exc)
            metrics.STEP_ERRORS.labels(code.name).inc()
            log.info("%s %s: %s", what, code.name, _bounded(str(exc)))
            raise
        metrics.STEP_LATENCY.labels(answer.serve_mode).observe(time.perf_counter() - started)
        return answer

    def _observation(self, request: session_pb2.StepRequest) -> torch.Tensor:
        size = len(request.observation.data)
        if size > self.max_observation_bytes:
            raise InvalidInput(
                f"observation is {size} bytes; the limit is {self.max_observation_bytes} "
                "(coordinator setting max_observation_bytes)"
            )
        try:
            return tensor_codec.decode(request.observation)
        except tensor_codec.TensorDecodeError as exc:
            raise InvalidInput(f"observation: {exc}") from exc


def _server_timing(answer: StepAnswer, started: float) -> str:
    handler_ms = (time.perf_counter() - started) * 1e3
    return (
        f"handler_ms={handler_ms:.4f};load_ms={answer.load_ms:.4f};"
        f"encode_ms={answer.encode_ms:.4f};commit_ms={answer.commit_ms:.4f}"
    )


def _priority(value: int) -> Priority:
    """PRIORITY_UNSPECIFIED is NORMAL; a value this coordinator does not know is bad input."""
    try:
        return Priority(value or Priority.NORMAL)
    except ValueError as exc:
        known = ", ".join(f"{p.name}={p.value}" for p in Priority)
        raise InvalidInput(f"priority {value} is not one of {known}") from exc


def _abort(context: grpc.ServicerContext, exc: ActionmeshError) -> None:
    metadata = [(ERROR_KEY, reason_of(exc))]
    if isinstance(exc, SeqConflict):
        metadata.append((CURRENT_SEQ_KEY, str(exc.current_seq)))
    if isinstance(exc, Overloaded):
        metadata.append((RETRY_AFTER_KEY, f"{exc.retry_after_s:.3f}"))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(status_of(exc), _bounded(str(exc)))


def _stream_step_timeout_s(context: grpc.ServicerContext) -> float | None:
    """The robot's per-step deadline on a stream (metadata STEP_TIMEOUT_KEY), if it sent one."""
    sent = dict(context.invocation_metadata() or ()).get(STEP_TIMEOUT_KEY)
    if sent is None:
        return None
    try:
        seconds = float(str(sent)[:32])
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInput(f"{STEP_TIMEOUT_KEY} must be a number of seconds > 0")
    return seconds


def _shortest(*limits_s: float | None) -> float | None:
    """The shortest of these time limits (None: no limit)."""
    given = [t for t in limits_s if t is not None]
    return min(given) if given else None


def _checked(request: R | Malformed) -> R:
    """The request if it parsed and its ids are of a sane length; else InvalidInput (which
    quotes neither)."""
    if isinstance(request, Malformed):
        raise InvalidInput(request.describe())
    for field in ("session_id", "client_id"):
        value = getattr(request, field, "")
        if len(value) > MAX_ID_CHARS:
            raise InvalidInput(f"{field} is {len(value)} characters; at most {MAX_ID_CHARS}")
    return request


def _bounded(message: str) -> str:
    if len(message) <= MAX_STATUS_CHARS:
        return message
    return f"{message[: MAX_STATUS_CHARS - 40]}... ({len(message)} characters in all)"
