"""The library robot controllers use: sessions, steps (unary or over one stream), retries and
coordinator failover. Client-side, only this module touches the session protos.

A step that fails with UNAVAILABLE or DEADLINE_EXCEEDED, or whose stream broke, is resent with the
SAME seq, with bounded attempts and exponential backoff with jitter. That is safe by the step
contract: a step some coordinator committed before it died is answered with the stored reply.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self, TypeVar

import grpc
import tenacity
import torch
from google.protobuf.message import Message
from prometheus_client import Counter

from service.client.client_errors import (
    STEP_TIMEOUT_KEY,
    ActionMeshClientError,
    InvalidObservation,
    RetryableFailure,
    SeqConflict,
    ServiceUnavailable,
    SessionNotFound,
    StepShed,
    failure,
    rpc_failure,
)
from service.proto import session_pb2, session_pb2_grpc, tensor_codec

__all__ = [
    "ActionMeshClient",
    "ActionMeshClientError",
    "ActionSpec",
    "InvalidObservation",
    "SeqConflict",
    "ServiceUnavailable",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "StepResult",
    "StepShed",
    "StepStream",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
Priority = Literal["SAFETY", "NORMAL", "BEST_EFFORT"]

RETRIES = Counter("actionmesh_client_retries_total", "Client calls resent, by status.", ["reason"])
FAILOVERS = Counter("actionmesh_client_failovers_total", "Client moves to the next coordinator.")

RETRY_FIRST_WAIT_S = 0.01  # doubles per retry, plus up to this much jitter
RETRY_MAX_WAIT_S = 0.25
SESSION_CALL_TIMEOUT_S = 5.0  # OpenSession, GetSession, CloseSession
SWITCH_AFTER_FAILURES = 2  # retryable failures in a row before leaving even a reachable coordinator


@dataclass(frozen=True)
class ActionSpec:
    observation_dim: int
    horizon: int
    joints: int


@dataclass(frozen=True, eq=False)
class StepResult:
    seq: int
    action: torch.Tensor  # float32 [horizon, joints]
    serve_mode: str  # FULL, EARLY_EXIT or FALLBACK
    exit_stage: int
    confidence: float
    model_version: str
    total_ms: float  # on the server, from receipt to reply
    batch_size: int
    observation_timestamp_s: float
    replayed_steps: int = 0  # lagging stages (or a version switch) caught up in this step
    state_reset: bool = False  # computed without the session's history: the log did not reach back


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    seq: int
    ttl_left_s: float
    model_version: str
    client_id: str
    stage_seqs: dict[int, int]  # stage -> the last step its state reflects
    action_spec: ActionSpec
    observation_log_depth: int


def should_move_on(unreachable: bool, failures_in_a_row: int) -> bool:
    """Leave a coordinator gRPC cannot reach at once, a reachable one after repeated failures."""
    return unreachable or failures_in_a_row >= SWITCH_AFTER_FAILURES


class _Closing:
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Coordinators:
    """The addresses, the current one, and one long-lived channel per address (made lazily)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses, self._index, self._failures = list(addresses), 0, 0
        self._channels: dict[str, tuple[grpc.Channel, Any]] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.addresses[self._index]

    def stub(self, address: str) -> Any:
        with self._lock:
            if address not in self._channels:
                channel = grpc.insecure_channel(address, [("grpc.max_reconnect_backoff_ms", 1000)])
                self._channels[address] = (channel, session_pb2_grpc.SessionServiceStub(channel))
            return self._channels[address][1]

    def failed(self, address: str, unreachable: bool) -> None:
        with self._lock:
            if address != self.current:  # another caller has moved on already
                return
            self._failures += 1
            if len(self.addresses) > 1 and should_move_on(unreachable, self._failures):
                self._index, self._failures = (self._index + 1) % len(self.addresses), 0
                FAILOVERS.inc()
                log.warning("coordinator=%s failed; client moves to %s", address, self.current)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures = 0 if address == self.current else self._failures

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._channels.values():
                channel.close()
            self._channels.clear()


def _count_retry(what: str, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    RETRIES.labels(reason=error.code if isinstance(error, RetryableFailure) else "UNKNOWN").inc()
    log.info("%s attempt=%d failed, retrying: %s", what, state.attempt_number, error)


class ActionMeshClient(_Closing):
    """Talks to the coordinators at `addresses` (one cluster); use as a context manager."""

    def __init__(
        self,
        addresses: list[str],
        *,
        step_timeout_s: float = 0.5,
        max_attempts: int = 4,
        client_id: str = "",
    ) -> None:
        if not addresses or max_attempts < 1 or step_timeout_s <= 0:
            raise ValueError("need an address, max_attempts >= 1 and step_timeout_s > 0")
        self.coordinators = _Coordinators(addresses)
        self.step_timeout_s, self.max_attempts = step_timeout_s, max_attempts
        self.client_id = client_id

    @property
    def current_address(self) -> str:
        return self.coordinators.current

    def open_session(self, ttl_s: float = 0.0, wait_replicas: int = 0) -> Session:
        """A new session. A retried open may leave an unused session behind, ended by its TTL.

        wait_replicas: acknowledge each step only once that many Redis replicas hold it.
        """
        request = session_pb2.OpenSessionRequest(
            ttl_s=ttl_s, client_id=self.client_id, wait_replicas=wait_replicas
        )
        got = self._call("open session", "OpenSession", request)
        spec = got.action_spec
        return Session(
            self,
            got.session_id,
            0,
            ActionSpec(spec.observation_dim, spec.horizon, spec.joints),
            got.model_version,
        )

    @contextmanager
    def session(self, ttl_s: float = 0.0, wait_replicas: int = 0) -> Iterator[Session]:
        """`with client.session() as session:` a new session, closed when the block ends."""
        opened = self.open_session(ttl_s, wait_replicas)
        try:
            yield opened
        finally:
            try:
                opened.close()
            except ActionMeshClientError as exc:  # it ends with its TTL anyway
                log.warning("session=%s not closed: %s", opened.session_id, exc)

    def attach(self, session_id: str) -> Session:
        """An existing session (say after a controller restart), at its committed seq."""
        info = self.session_info(session_id)
        return Session(self, session_id, info.seq, info.action_spec, info.model_version)

    def session_info(self, session_id: str) -> SessionInfo:
        request = session_pb2.GetSessionRequest(session_id=session_id)
        got = self._call(f"session={session_id} info", "GetSession", request)
        spec = got.action_spec
        return SessionInfo(
            got.session_id,
            got.seq,
            got.ttl_left_s,
            got.model_version,
            got.client_id,
            {s.stage: s.seq for s in got.stage_states},
            ActionSpec(spec.observation_dim, spec.horizon, spec.joints),
            got.observation_log_depth,
        )

    def _call(
        self, what: str, method: str, request: Message, timeout_s: float = SESSION_CALL_TIMEOUT_S
    ) -> Any:
        """The unary `method` on the current coordinator, with retries and failover."""

        def attempt(address: str) -> Any:
            try:
                return getattr(self.coordinators.stub(address), method)(request, timeout=timeout_s)
            except grpc.RpcError as exc:
                raise rpc_failure(exc) from exc

        return self._retrying(what, attempt)

    def _retrying(self, what: str, attempt: Callable[[str], _T]) -> _T:
        """attempt(current address) until it raises no RetryableFailure, at most max_attempts times."""
        tried: list[str] = []

        def once() -> _T:
            tried.append(address := self.coordinators.current)
            try:
                result = attempt(address)
            except RetryableFailure as exc:
                self.coordinators.failed(address, exc.unreachable)
                raise
            except ActionMeshClientError:
                self.coordinators.succeeded(address)  # it answered
                raise
            self.coordinators.succeeded(address)
            return result

        policy = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableFailure),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            # = wait_exponential_jitter, whose `multiplier` needs tenacity >= 9.1 (pyproject: 8.2)
            wait=tenacity.wait_exponential(multiplier=RETRY_FIRST_WAIT_S, max=RETRY_MAX_WAIT_S)
            + tenacity.wait_random(0, RETRY_FIRST_WAIT_S),
            before_sleep=partial(_count_retry, what),
            reraise=True,
        )
        try:
            return policy(once)
        except RetryableFailure as exc:
            where = list(dict.fromkeys(tried))
            raise ServiceUnavailable(
                f"{what}: no answer after {len(tried)} attempt(s) on {', '.join(where)} "
                f"(client setting max_attempts); last error {exc}",
                exc.code,
                len(tried),
                where,
            ) from exc

    def close(self) -> None:
        self.coordinators.close()


class Session:
    """One robot's session, stepped from one thread; `seq` is the last acknowledged step."""

    def __init__(
        self,
        client: ActionMeshClient,
        session_id: str,
        seq: int,
        spec: ActionSpec,
        model_version: str,
    ) -> None:
        self.client, self.session_id, self.seq = client, session_id, seq
        self.action_spec, self.model_version = spec, model_version

    def step(
        self,
        observation: torch.Tensor,
        priority: Priority = "NORMAL",
        timestamp_s: float | None = None,
    ) -> StepResult:
        """Step seq+1 with a unary Step call."""

        def call(request: session_pb2.StepRequest) -> session_pb2.StepReply:
            what = f"session={self.session_id} seq={request.seq}"
            reply: session_pb2.StepReply = self.client._call(
                what, "Step", request, self.client.step_timeout_s
            )
            return reply

        return self._step_with(call, observation, priority, timestamp_s)

    def _step_with(
        self,
        call: Callable[[session_pb2.StepRequest], session_pb2.StepReply],
        observation: torch.Tensor,
        priority: Priority,
        timestamp_s: float | None,
    ) -> StepResult:
        """Send seq+1. If the answer is the stored reply of an earlier observation (its step
        was committed before a failure this client gave up on), take it as that step's
        acknowledgement and send this observation again as the next seq."""
        for _ in range(2):
            request = self._request(observation, priority, timestamp_s)
            reply = call(request)
            result = self._acknowledge(request, reply)
            if reply.observation_timestamp_s == request.timestamp_s:
                return result
            log.warning(
                "session=%s seq=%d had been committed with an earlier observation; "
                "stepping this one as seq %d",
                self.session_id,
                request.seq,
                request.seq + 1,
            )
        raise ActionMeshClientError(
            f"session={self.session_id}: two stale replies in a row", "INTERNAL"
        )

    def stream(self) -> StepStream:
        return StepStream(self)

    def info(self) -> SessionInfo:
        return self.client.session_info(self.session_id)

    def close(self) -> bool:
        """Ends the session on the server; False if it was already gone."""
        request = session_pb2.CloseSessionRequest(session_id=self.session_id)
        return bool(
            self.client._call(f"session={self.session_id} close", "CloseSession", request).closed
        )

    def _request(
        self, observation: torch.Tensor, priority: Priority, timestamp_s: float | None
    ) -> session_pb2.StepRequest:
        return session_pb2.StepRequest(
            session_id=self.session_id,
            seq=self.seq + 1,
            observation=tensor_codec.encode(observation),
            priority=priority,
            timestamp_s=time.time() if timestamp_s is None else timestamp_s,
        )

    def _acknowledge(
        self, request: session_pb2.StepRequest, reply: session_pb2.StepReply
    ) -> StepResult:
        """The answer to `request`; the session moves on to its seq."""
        if reply.seq != request.seq:
            raise ActionMeshClientError(
                f"sent seq {request.seq}, the reply is {reply.seq}", "INTERNAL"
            )
        result = StepResult(
            reply.seq,
            tensor_codec.decode(reply.action),
            session_pb2.ServeMode.Name(reply.serve_mode),
            reply.exit_stage,
            reply.confidence,
            reply.model_version,
            reply.timing.total_ms,
            reply.batch_size,
            reply.observation_timestamp_s,
            replayed_steps=reply.replayed_steps,
            state_reset=reply.state_reset,
        )
        self.seq, self.model_version = result.seq, result.model_version
        return result


class StepStream(_Closing):
    """A session's steps over one StreamSteps stream. When the stream breaks or stays silent it
    is reopened on the (maybe next) coordinator and the same seq resent."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._open: _OpenStream | None = None

    def step(
        self,
        observation: torch.Tensor,
        priority: Priority = "NORMAL",
        timestamp_s: float | None = None,
    ) -> StepResult:
        def call(request: session_pb2.StepRequest) -> session_pb2.StepReply:
            what = f"session={self.session.session_id} seq={request.seq} (stream)"
            return self.session.client._retrying(
                what, lambda address: self._attempt(address, request)
            )

        return self.session._step_with(call, observation, priority, timestamp_s)

    def _attempt(self, address: str, request: session_pb2.StepRequest) -> session_pb2.StepReply:
        if self._open is None or self._open.address != address:
            self.close()
            client = self.session.client
            self._open = _OpenStream(
                address, client.coordinators.stub(address), client.step_timeout_s
            )
        try:
            item = self._open.exchange(request, self.session.client.step_timeout_s)
        except RetryableFailure:
            self.close()  # a late answer on it must not be taken for the next step's
            raise
        if not item.HasField("error"):
            return item.reply
        error = item.error  # the stream itself is fine
        code = next((c.name for c in grpc.StatusCode if c.value[0] == error.code), "UNKNOWN")
        raise failure(code, error.message, error.reason, error.current_seq, error.retry_after_s)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


class _OpenStream:
    """One StreamSteps call; a reader thread hands its items over, so that a step can time out."""

    def __init__(self, address: str, stub: Any, step_timeout_s: float) -> None:
        self.address = address
        self._outbox: queue.SimpleQueue[session_pb2.StepRequest | None] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[session_pb2.StreamStepsReply | grpc.RpcError | None] = (
            queue.SimpleQueue()
        )
        # A stream has no per-message deadline: the coordinator is told the robot's own.
        deadline = ((STEP_TIMEOUT_KEY, f"{step_timeout_s:.6f}"),)
        self._call = stub.StreamSteps(self._requests(), metadata=deadline)
        threading.Thread(target=self._read, name=f"stream-{address}", daemon=True).start()

    def _requests(self) -> Iterator[session_pb2.StepRequest]:
        while (request := self._outbox.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for item in self._call:
                self._inbox.put(item)
            self._inbox.put(None)
        except grpc.RpcError as exc:
            self._inbox.put(exc)

    def exchange(
        self, request: session_pb2.StepRequest, timeout_s: float
    ) -> session_pb2.StreamStepsReply:
        """Send one request, wait for its item; RetryableFailure if the stream broke or stayed silent."""
        self._outbox.put(request)
        try:
            got = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise RetryableFailure(
                "DEADLINE_EXCEEDED", f"no answer within {timeout_s}s", False
            ) from None
        if got is None:
            raise RetryableFailure(
                "UNAVAILABLE", f"{self.address} ended the stream", unreachable=True
            )
        if isinstance(got, grpc.RpcError):  # StreamSteps never ends a stream for one bad step
            if got.code().name in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):  # too big a message
                raise rpc_failure(got)
            raise RetryableFailure(
                got.code().name, f"stream broke: {got.details()}", unreachable=True
            )
        return got

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
