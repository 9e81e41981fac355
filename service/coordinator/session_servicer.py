"""SessionService: decode, call one engine method, map errors to status codes in one place."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

import grpc
import torch
from google.protobuf.message import Message

from fallback.priority import Priority
from service.coordinator.drain import DEFAULT_GRACE_S, Drain
from service.coordinator.engine import SessionEngine, StepAnswer
from service.coordinator.error_status import (
    current_seq_of,
    reason_of,
    retry_after_of,
    rich_status,
    status_of,
    trailing_metadata,
)
from service.coordinator.session_access import SessionAccess
from service.coordinator.session_handlers import Malformed
from service.coordinator.step_errors import ActionmeshError, Draining, InvalidInput
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime import logs, metrics, tracing
from service.runtime.identity import Identity
from state.session import short_id

log = logging.getLogger(__name__)

MAX_ID_CHARS = 128  # session and client ids (ours are 24 characters)
# What a status message may carry: far below gRPC's metadata limits, so the robot gets the
# real status and never "metadata size exceeds hard limit".
MAX_STATUS_CHARS = 1000

R = TypeVar("R", bound=Message)

STEP_TIMEOUT_KEY = "actionmesh-step-timeout-s"  # a stream's per-step deadline, from the robot
# Sent by a caller (any value) that wants, in the trailing metadata under the same key, where a
# unary step's time went in the coordinator: "handler_ms=..;load_ms=..;encode_ms=..;commit_ms=..".
SERVER_TIMING_KEY = "actionmesh-server-timing"
# On a step answered by a draining coordinator: seconds until its steps are refused. The robot
# sends its next step to another coordinator.
DRAINING_KEY = "actionmesh-draining"


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(
        self,
        engine: SessionEngine,
        step_timeout_s: float,
        max_observation_bytes: int,
        access: SessionAccess | None = None,
        *,
        action_period_ms: float = 20.0,
        joint_names: Sequence[str] = (),
        drain: Drain | None = None,
    ):
        """joint_names: one per joint, or () for joint_0, joint_1, ..."""
        self.engine, self.step_timeout_s = engine, step_timeout_s
        self.drain = drain or Drain(DEFAULT_GRACE_S)
        self.max_observation_bytes = max_observation_bytes
        self.access = access or SessionAccess.open_door()
        cfg = engine.model
        if joint_names and len(joint_names) != cfg.joints:
            raise ValueError(f"{len(joint_names)} joint names for a model of {cfg.joints} joints")
        self.action_spec = session_pb2.ActionSpec(
            observation_dim=cfg.observation_dim,
            horizon=cfg.horizon,
            joints=cfg.joints,
            action_period_ms=action_period_ms,
            joint_names=list(joint_names) or [f"joint_{i}" for i in range(cfg.joints)],
        )

    def OpenSession(  # noqa: N802 (gRPC naming)
        self,
        request: session_pb2.OpenSessionRequest | Malformed,
        context: grpc.ServicerContext,
    ) -> session_pb2.OpenSessionReply:
        try:
            caller = self.access.caller(context)
            if self.drain.draining():
                raise Draining("this coordinator is draining: open the session on another one")
            request = _checked(request)
            opened = self.engine.open(
                request.ttl_s,
                request.client_id,
                request.wait_replicas,
                caller,
                request_id=request.request_id,
            )
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
            caller = self.access.caller(context)
            answer = self._step(request, context.time_remaining(), caller)
        except ActionmeshError as exc:
            _abort(context, exc)
        trailers: list[tuple[str, str]] = []
        if any(key == SERVER_TIMING_KEY for key, _ in context.invocation_metadata() or ()):
            trailers.append((SERVER_TIMING_KEY, _server_timing(answer, started)))
        if (left_s := self.drain.grace_left_s()) is not None:
            trailers.append((DRAINING_KEY, f"{left_s:.3f}"))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        return answer.reply

    def StreamSteps(  # noqa: N802
        self,
        request_iterator: Iterator[session_pb2.StepRequest | Malformed],
        context: grpc.ServicerContext,
    ) -> Iterator[session_pb2.StreamStepsReply]:
        try:
            caller = self.access.caller(context)  # once: a stream is one caller's
            budget_s = _stream_step_timeout_s(context)
        except ActionmeshError as exc:
            _abort(context, exc)
        # Each step is a trace of its own, linked to the robot's context of the whole stream.
        stream_trace = tracing.from_metadata(context.invocation_metadata())
        for request in request_iterator:
            seq = 0 if isinstance(request, Malformed) else request.seq
            try:  # each step within its own budget and within what is left of the stream's
                budget = _shortest(budget_s, context.time_remaining())
                answer = self._step(request, budget, caller, stream_trace)
            except ActionmeshError as exc:
                _count_refusal(exc)
                message = _bounded(str(exc))
                error = session_pb2.StepError(
                    code=status_of(exc).value[0],
                    message=message,
                    current_seq=current_seq_of(exc) or 0,
                    reason=reason_of(exc),
                    retry_after_s=retry_after_of(exc) or 0.0,
                    status=rich_status(exc, message),
                )
                yield session_pb2.StreamStepsReply(seq=seq, error=error)
                continue
            reply = session_pb2.StepReply.FromString(answer.reply)
            yield session_pb2.StreamStepsReply(seq=seq, reply=reply)
            if self.drain.draining():  # the robot's next stream goes to another coordinator
                _abort(context, Draining("this coordinator is draining: step on another one"))

    def GetSession(  # noqa: N802
        self, request: session_pb2.GetSessionRequest | Malformed, context: grpc.ServicerContext
    ) -> session_pb2.SessionInfo:
        try:
            caller = self.access.caller(context)
            request = _checked(request)
            summary = self.engine.get(request.session_id, caller)
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
            caller = self.access.caller(context)
            request = _checked(request)
            closed = self.engine.close(request.session_id, caller)
        except ActionmeshError as exc:
            _abort(context, exc)
        return session_pb2.CloseSessionReply(closed=closed)

    def Drain(  # noqa: N802
        self, request: session_pb2.DrainRequest | Malformed, context: grpc.ServicerContext
    ) -> session_pb2.DrainReply:
        try:
            caller = self.access.admin(context)
            request = _checked(request)
            try:
                state = self.drain.begin(request.grace_s)
            except ValueError as exc:
                raise InvalidInput(str(exc), "grace_s") from exc
        except ActionmeshError as exc:
            _abort(context, exc)
        log.warning(
            "drain asked by %s: steps served %.1fs more%s",
            "a caller (auth off)" if caller is None else f"identity {caller.name!r}",
            state.grace_left_s,
            " (already draining)" if state.already_draining else "",
        )
        return session_pb2.DrainReply(
            grace_left_s=state.grace_left_s, already_draining=state.already_draining
        )

    def _step(
        self,
        request: session_pb2.StepRequest | Malformed,
        time_remaining: float | None,
        caller: Identity | None,
        stream_trace: object | None = None,
    ) -> StepAnswer:
        """One step in its span (a unary call's: under the call's; a stream's: linked to the
        stream's); raises ActionmeshError for the caller to map."""
        links = () if stream_trace is None else (stream_trace,)
        with tracing.span("actionmesh.step", links=links):
            return self._measured_step(request, time_remaining, caller)

    def _measured_step(
        self,
        request: session_pb2.StepRequest | Malformed,
        time_remaining: float | None,
        caller: Identity | None,
    ) -> StepAnswer:
        """One step with its metrics and log event (a refusal, drained ones included, too)."""
        started = time.perf_counter()
        what = "malformed request" if isinstance(request, Malformed) else "step"
        event: dict[str, object] = {}
        try:
            request = _checked(request)
            event = logs.fields(session=request.session_id, seq=request.seq)
            tracing.annotate(
                {
                    "actionmesh.session": short_id(request.session_id),
                    "actionmesh.seq": request.seq,
                }
            )
            if self.drain.steps_refused():
                raise Draining("this coordinator has drained: step on another one (same seq)")
            self.access.step_allowed(caller)
            observation = self._observation(request)
            # A call without a deadline reports a huge time_remaining; step_timeout_s caps it.
            limits = (time_remaining, _step_budget_s(request))
            budget = min([self.step_timeout_s, *(t for t in limits if t is not None)])
            answer = self.engine.step(
                request.session_id,
                request.seq,
                observation,
                request.timestamp_s,
                time.monotonic() + budget,
                _priority(request.priority),
                caller,
                observation_id=request.observation_id,
                tick=request.tick,
            )
        except ActionmeshError as exc:
            code = status_of(exc)
            metrics.STEP_ERRORS.labels(code.name).inc()
            log.info("%s %s: %s", what, code.name, _bounded(str(exc)), extra=event)
            raise
        elapsed = time.perf_counter() - started
        metrics.STEP_LATENCY.labels(answer.serve_mode).observe(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            event |= logs.fields(mode=answer.serve_mode.value, latency_ms=elapsed * 1e3)
            log.debug("step answered", extra=event)
        return answer

    def _observation(self, request: session_pb2.StepRequest) -> torch.Tensor:
        size = len(request.observation.data)
        if size > self.max_observation_bytes:
            raise InvalidInput(
                f"observation is {size} bytes; the limit is {self.max_observation_bytes} "
                "(coordinator setting max_observation_bytes)",
                "observation",
            )
        try:
            return tensor_codec.decode(request.observation)
        except tensor_codec.TensorDecodeError as exc:
            raise InvalidInput(f"observation: {exc}", "observation") from exc


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
        raise InvalidInput(f"priority {value} is not one of {known}", "priority") from exc


# Refusals for who the caller is, counted in metrics.AUTH_REFUSALS by reason.
_AUTH_REASONS = frozenset({"unauthenticated", "permission_denied", "rate_limited", "session_limit"})


def _count_refusal(exc: ActionmeshError) -> None:
    reason = reason_of(exc)
    if reason in _AUTH_REASONS:
        metrics.AUTH_REFUSALS.labels(reason).inc()


def _abort(context: grpc.ServicerContext, exc: ActionmeshError) -> None:
    _count_refusal(exc)
    message = _bounded(str(exc))
    context.set_trailing_metadata(trailing_metadata(exc, message))
    context.abort(status_of(exc), message)


def _step_budget_s(request: session_pb2.StepRequest) -> float | None:
    """The step's own budget (budget_ms), if it set one."""
    budget_ms = request.budget_ms
    if not (math.isfinite(budget_ms) and budget_ms >= 0):
        raise InvalidInput(
            "budget_ms must be a finite number of ms >= 0 (0: no budget of its own)", "budget_ms"
        )
    return budget_ms / 1e3 if budget_ms else None


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
    for field in ("session_id", "client_id", "request_id"):
        value = getattr(request, field, "")
        if len(value) > MAX_ID_CHARS:
            raise InvalidInput(f"{field} is {len(value)} characters; at most {MAX_ID_CHARS}", field)
    return request


def _bounded(message: str) -> str:
    if len(message) <= MAX_STATUS_CHARS:
        return message
    return f"{message[: MAX_STATUS_CHARS - 40]}... ({len(message)} characters in all)"
