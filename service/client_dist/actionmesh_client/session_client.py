"""The library robot controllers use: sessions, steps (unary or over one stream), retries and
coordinator failover. Client-side, only this module touches the session protos.

A step that fails with UNAVAILABLE or DEADLINE_EXCEEDED, or whose stream broke, is resent with the
SAME seq and observation_id, with bounded attempts and exponential backoff with jitter. That is
safe by the step contract: a step some coordinator committed before it died is answered with the
stored reply, which echoes the observation_id it answers.

Depends on grpcio, protobuf and numpy only (the retry loop is written out here rather than taken
from tenacity, the counters are Prometheus's only when prometheus_client is installed).
Observations are anything numpy can read (numpy arrays, lists, torch tensors); actions are numpy.
"""

from __future__ import annotations

import enum
import itertools
import logging
import queue
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from actionmesh_client import array_codec
from actionmesh_client.bearer import BearerToken
from actionmesh_client.client_errors import (
    DRAINING_KEY,
    STEP_TIMEOUT_KEY,
    ActionMeshClientError,
    ErrorDetails,
    InvalidObservation,
    RetryableFailure,
    SeqConflict,
    ServiceUnavailable,
    SessionNotFound,
    StepShed,
    details_of,
    failure,
    rpc_failure,
)
from actionmesh_client.client_tls import ClientTls, ReloadingChannel
from actionmesh_client.metrics import counter
from actionmesh_client.proto import session_pb2, session_pb2_grpc
from actionmesh_client.proto_names import priority_value, serve_mode_name

__all__ = [
    "ActionMeshClient",
    "ActionMeshClientError",
    "ActionSpec",
    "ClientTls",
    "InvalidObservation",
    "Priority",
    "SeqConflict",
    "ServeMode",
    "ServiceUnavailable",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "StepResult",
    "StepShed",
    "StepStream",
]

log = logging.getLogger(__name__)
LOGGED_ID_CHARS = 8  # a session id is a credential: logs show its first characters only
_T = TypeVar("_T")

RETRIES = counter("actionmesh_client_retries_total", "Client calls resent, by status.", "reason")
FAILOVERS = counter("actionmesh_client_failovers_total", "Client moves to the next coordinator.")

RETRY_FIRST_WAIT_S = 0.01  # doubles per retry, plus up to this much jitter
RETRY_MAX_WAIT_S = 0.25
STEP_TIMEOUT_S = 0.5  # the default step deadline
SESSION_CALL_TIMEOUT_S = 5.0  # OpenSession, GetSession, CloseSession
SWITCH_AFTER_FAILURES = 2  # retryable failures in a row before leaving even a reachable coordinator


class Priority(str, enum.Enum):
    """A step's priority under overload (short names; plain strings are accepted too)."""

    SAFETY = "SAFETY"
    NORMAL = "NORMAL"
    BEST_EFFORT = "BEST_EFFORT"


class ServeMode(str, enum.Enum):
    """How a reply was computed; compares equal to its short name ("FULL", ...)."""

    FULL = "FULL"
    EARLY_EXIT = "EARLY_EXIT"  # from a stage's exit head: later stages were down
    FALLBACK = "FALLBACK"  # from the distilled student model in the coordinator
    UNSPECIFIED = "UNSPECIFIED"  # not set, or a mode newer than this client


@dataclass(frozen=True)
class ActionSpec:
    observation_dim: int
    horizon: int
    joints: int
    action_period_ms: float = 0.0  # action i of a reply is for tick first_action_tick + i
    joint_names: tuple[str, ...] = ()  # the action's columns; () from a server that sends none

    @classmethod
    def from_proto(cls, spec: session_pb2.ActionSpec) -> ActionSpec:
        return cls(
            spec.observation_dim,
            spec.horizon,
            spec.joints,
            spec.action_period_ms,
            tuple(spec.joint_names),
        )


@dataclass(frozen=True, eq=False)
class StepResult:
    seq: int
    action: npt.NDArray[np.float32]  # [horizon, joints]
    serve_mode: ServeMode
    exit_stage: int
    confidence: float
    model_version: str
    total_ms: float  # on the server, from receipt to reply
    batch_size: int
    observation_timestamp_s: float
    replayed_steps: int = 0  # lagging stages (or a version switch) caught up in this step
    state_reset: bool = False  # computed without the session's history: the log did not reach back
    observation_id: int = 0  # of the observation this answers (echoed by the server)
    first_action_tick: int = 0  # action[i] is for tick first_action_tick + i
    client_ms: float = 0.0  # in step(), retries included: what the robot waited


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


_C = TypeVar("_C", bound="_Closing")


class _Closing:
    def close(self) -> None: ...

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Coordinators:
    """The addresses, the current one, and one long-lived channel per address (made lazily,
    remade with a client certificate rotated on disk when it reconnects)."""

    def __init__(
        self,
        addresses: list[str],
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        self.addresses, self._index, self._failures = list(addresses), 0, 0
        self._tls = tls
        self._bearer = BearerToken(token) if token else None
        # address -> (its channel, the grpc.Channel the stub was made on, the stub)
        self._channels: dict[str, tuple[ReloadingChannel, grpc.Channel, Any]] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.addresses[self._index]

    def stub(self, address: str) -> Any:
        with self._lock:
            if address not in self._channels:
                options = [("grpc.max_reconnect_backoff_ms", 1000)]
                reloading = ReloadingChannel(address, self._tls, options)
                self._channels[address] = (reloading, *self._stub_on(reloading.current()))
            reloading, made_on, _ = self._channels[address]
            channel = reloading.current()
            if channel is not made_on:  # remade with a rotated certificate
                self._channels[address] = (reloading, *self._stub_on(channel))
            return self._channels[address][2]

    def _stub_on(self, channel: grpc.Channel) -> tuple[grpc.Channel, Any]:
        intercepted = (
            channel if self._bearer is None else grpc.intercept_channel(channel, self._bearer)
        )
        return channel, session_pb2_grpc.SessionServiceStub(intercepted)

    def failed(self, address: str, unreachable: bool) -> None:
        with self._lock:
            if address != self.current:  # another caller has moved on already
                return
            self._failures += 1
            if len(self.addresses) > 1 and should_move_on(unreachable, self._failures):
                self._index, self._failures = (self._index + 1) % len(self.addresses), 0
                FAILOVERS.inc()
                log.warning("coordinator=%s failed; client moves to %s", address, self.current)

    def leave(self, address: str) -> None:
        """`address` is draining: the next call goes to the next coordinator (if any)."""
        with self._lock:
            if address != self.current or len(self.addresses) == 1:
                return
            self._index, self._failures = (self._index + 1) % len(self.addresses), 0
            FAILOVERS.inc()
            log.info("coordinator=%s is draining; client moves to %s", address, self.current)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures = 0 if address == self.current else self._failures

    def close(self) -> None:
        with self._lock:
            for reloading, _, _ in self._channels.values():
                reloading.close()
            self._channels.clear()


def retry_wait_s(attempt: int) -> float:
    """The pause after failed attempt `attempt` (1, 2, ...): exponential, capped, with jitter."""
    backoff = min(RETRY_FIRST_WAIT_S * 2.0 ** (attempt - 1), RETRY_MAX_WAIT_S)
    return backoff + random.uniform(0.0, RETRY_FIRST_WAIT_S)


def _left_s(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _as_observation(observation: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """What is sent: floating observations as float32 (numpy's float64 default, a torch tensor);
    any other dtype as it is, for the coordinator to refuse by name."""
    array = np.asarray(observation)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def _priority(priority: Priority | str) -> int:
    try:
        return priority_value(Priority(priority).value)
    except ValueError:
        known = ", ".join(p.value for p in Priority)
        raise ValueError(f"priority {priority!r} is not one of {known}") from None


class ActionMeshClient(_Closing):
    """Talks to the coordinators at `addresses` (one cluster); use as a context manager."""

    def __init__(
        self,
        addresses: list[str],
        *,
        step_timeout_s: float = STEP_TIMEOUT_S,
        max_attempts: int = 4,
        client_id: str = "",
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        """tls: mutual TLS to coordinators started with --tls-dir (None: plaintext); token: a
        bearer token (`actionmesh token add`), for coordinators with auth on."""
        if not addresses or max_attempts < 1 or step_timeout_s <= 0:
            raise ValueError("need an address, max_attempts >= 1 and step_timeout_s > 0")
        if tls is not None:
            tls.credentials()  # a file that cannot be read is the caller's error, now
        self.coordinators = _Coordinators(addresses, tls, token)
        self.step_timeout_s, self.max_attempts = step_timeout_s, max_attempts
        self.client_id = client_id

    @property
    def current_address(self) -> str:
        return self.coordinators.current

    def open_session(self, ttl_s: float = 0.0, wait_replicas: int = 0) -> Session:
        """A new session. Every attempt carries the same request_id, so a retried open returns
        the session the first attempt created rather than a second one.

        wait_replicas: acknowledge each step only once that many Redis replicas hold it.
        """
        request = session_pb2.OpenSessionRequest(
            ttl_s=ttl_s,
            client_id=self.client_id,
            wait_replicas=wait_replicas,
            request_id=uuid.uuid4().hex,
        )
        got = self._call("open session", "OpenSession", request)
        spec = ActionSpec.from_proto(got.action_spec)
        return Session(self, got.session_id, 0, spec, got.model_version)

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
                log.warning("session=%s not closed: %s", opened.session_id[:LOGGED_ID_CHARS], exc)

    def attach(self, session_id: str) -> Session:
        """An existing session (say after a controller restart), at its committed seq."""
        info = self.session_info(session_id)
        return Session(self, session_id, info.seq, info.action_spec, info.model_version)

    def session_info(self, session_id: str) -> SessionInfo:
        request = session_pb2.GetSessionRequest(session_id=session_id)
        got = self._call(f"session={session_id[:LOGGED_ID_CHARS]} info", "GetSession", request)
        spec = got.action_spec
        return SessionInfo(
            got.session_id,
            got.seq,
            got.ttl_left_s,
            got.model_version,
            got.client_id,
            {s.stage: s.seq for s in got.stage_states},
            ActionSpec.from_proto(spec),
            got.observation_log_depth,
        )

    def _call(
        self,
        what: str,
        method: str,
        request: Message,
        timeout_s: float = SESSION_CALL_TIMEOUT_S,
        deadline: float | None = None,
    ) -> Any:
        """The unary `method` on the current coordinator, with retries and failover; every
        attempt ends by `deadline` (time.monotonic()) when one is given."""

        def attempt(address: str) -> Any:
            timeout = timeout_s if deadline is None else min(timeout_s, _left_s(deadline))
            try:
                stub = self.coordinators.stub(address)
                reply, call = getattr(stub, method).with_call(request, timeout=timeout)
            except grpc.RpcError as exc:
                raise rpc_failure(exc) from exc
            if any(key == DRAINING_KEY for key, _ in call.trailing_metadata() or ()):
                self.coordinators.leave(address)
            return reply

        return self._retrying(what, attempt, deadline)

    def _retrying(
        self, what: str, attempt: Callable[[str], _T], deadline: float | None = None
    ) -> _T:
        """attempt(current address) until it raises no RetryableFailure: at most max_attempts
        times, and none started after `deadline` (time.monotonic()) when one is given."""
        tried: list[str] = []
        while True:
            tried.append(address := self.coordinators.current)
            try:
                result = attempt(address)
            except RetryableFailure as exc:
                self.coordinators.failed(address, exc.unreachable)
                wait_s = retry_wait_s(len(tried))
                out_of_time = deadline is not None and time.monotonic() + wait_s >= deadline
                if len(tried) >= self.max_attempts or out_of_time:
                    where = list(dict.fromkeys(tried))
                    limit = "its deadline" if out_of_time else "client setting max_attempts"
                    raise ServiceUnavailable(
                        f"{what}: no answer after {len(tried)} attempt(s) on {', '.join(where)} "
                        f"({limit}); last error {exc}",
                        exc.code,
                        len(tried),
                        where,
                    ) from exc
                RETRIES.inc(exc.code)
                log.info("%s attempt=%d failed, retrying: %s", what, len(tried), exc)
                time.sleep(wait_s)
                continue
            except ActionMeshClientError:
                self.coordinators.succeeded(address)  # it answered
                raise
            self.coordinators.succeeded(address)
            return result

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
        # Observation ids unique within the session: a random start, then one up per observation.
        self._observation_ids = itertools.count(secrets.randbits(62) + 1)

    def step(
        self,
        observation: npt.ArrayLike,
        priority: Priority | str = Priority.NORMAL,
        timestamp_s: float | None = None,
        *,
        observation_id: int | None = None,
        tick: int = 0,
        budget_s: float | None = None,
    ) -> StepResult:
        """Step seq+1 with a unary Step call.

        observation_id: how the reply is matched to this observation (default: the next of the
        session's own). tick: the control tick the observation was taken at (the reply's
        first_action_tick). budget_s: the step's one deadline, retries included, also sent to
        the coordinator (default: each attempt gets the client's step_timeout_s).
        """

        def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
            what = f"session={self.session_id[:LOGGED_ID_CHARS]} seq={request.seq}"
            reply: session_pb2.StepReply = self.client._call(
                what, "Step", request, self.client.step_timeout_s, deadline
            )
            return reply

        return self._step_with(
            call, observation, priority, timestamp_s, observation_id, tick, budget_s
        )

    def _step_with(
        self,
        call: Callable[[session_pb2.StepRequest, float | None], session_pb2.StepReply],
        observation: npt.ArrayLike,
        priority: Priority | str,
        timestamp_s: float | None,
        observation_id: int | None,
        tick: int,
        budget_s: float | None,
    ) -> StepResult:
        """Send seq+1. If the answer is the stored reply of an earlier observation (its step
        was committed before a failure this client gave up on), take it as that step's
        acknowledgement and send this observation again as the next seq."""
        started = time.monotonic()
        deadline = None if budget_s is None else started + budget_s
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        if observation_id is None:
            observation_id = next(self._observation_ids)
        for _ in range(2):
            request = self._request(observation, priority, timestamp_s, observation_id, tick)
            if deadline is not None:
                request.budget_ms = _left_s(deadline) * 1e3
            reply = call(request, deadline)
            result = self._acknowledge(request, reply, started)
            if _answers(reply, request):
                return result
            log.warning(
                "session=%s seq=%d had been committed with an earlier observation; "
                "stepping this one as seq %d",
                self.session_id[:LOGGED_ID_CHARS],
                request.seq,
                request.seq + 1,
            )
        raise ActionMeshClientError(
            f"session={self.session_id[:LOGGED_ID_CHARS]}: two stale replies in a row", "INTERNAL"
        )

    def stream(self) -> StepStream:
        return StepStream(self)

    def info(self) -> SessionInfo:
        return self.client.session_info(self.session_id)

    def close(self) -> bool:
        """Ends the session on the server; False if it was already gone."""
        request = session_pb2.CloseSessionRequest(session_id=self.session_id)
        return bool(
            self.client._call(
                f"session={self.session_id[:LOGGED_ID_CHARS]} close", "CloseSession", request
            ).closed
        )

    def _request(
        self,
        observation: npt.ArrayLike,
        priority: Priority | str,
        timestamp_s: float | None,
        observation_id: int,
        tick: int,
    ) -> session_pb2.StepRequest:
        return session_pb2.StepRequest(
            session_id=self.session_id,
            seq=self.seq + 1,
            observation=array_codec.encode(_as_observation(observation)),
            priority=_priority(priority),  # type: ignore[arg-type]
            timestamp_s=time.time() if timestamp_s is None else timestamp_s,
            observation_id=observation_id,
            tick=tick,
        )

    def _acknowledge(
        self, request: session_pb2.StepRequest, reply: session_pb2.StepReply, started: float
    ) -> StepResult:
        """The answer to `request`; the session moves on to its seq."""
        if reply.seq != request.seq:
            raise ActionMeshClientError(
                f"sent seq {request.seq}, the reply is {reply.seq}", "INTERNAL"
            )
        result = StepResult(
            reply.seq,
            np.array(array_codec.decode(reply.action), dtype=np.float32),  # writable, owned
            _serve_mode(reply.serve_mode),
            reply.exit_stage,
            reply.confidence,
            reply.model_version,
            reply.timing.total_ms,
            reply.batch_size,
            reply.observation_timestamp_s,
            replayed_steps=reply.replayed_steps,
            state_reset=reply.state_reset,
            observation_id=reply.observation_id,
            first_action_tick=reply.first_action_tick,
            client_ms=(time.monotonic() - started) * 1e3,
        )
        self.seq, self.model_version = result.seq, result.model_version
        return result


def _answers(reply: session_pb2.StepReply, request: session_pb2.StepRequest) -> bool:
    """Whether the reply answers this request's observation: by observation_id; by timestamp
    from a coordinator that does not echo ids (before observation_id existed)."""
    if reply.observation_id:
        return bool(reply.observation_id == request.observation_id)
    return bool(reply.observation_timestamp_s == request.timestamp_s)


def _serve_mode(value: int) -> ServeMode:
    """UNSPECIFIED for 0 and for a mode added after this client was built."""
    return ServeMode(serve_mode_name(value))


class StepStream(_Closing):
    """A session's steps over one StreamSteps stream. When the stream breaks or stays silent it
    is reopened on the (maybe next) coordinator and the same seq resent."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._open: _OpenStream | None = None

    def step(
        self,
        observation: npt.ArrayLike,
        priority: Priority | str = Priority.NORMAL,
        timestamp_s: float | None = None,
        *,
        observation_id: int | None = None,
        tick: int = 0,
        budget_s: float | None = None,
    ) -> StepResult:
        """As Session.step, over the stream."""

        def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
            what = f"session={self.session.session_id[:LOGGED_ID_CHARS]} seq={request.seq} (stream)"
            return self.session.client._retrying(
                what, lambda address: self._attempt(address, request, deadline), deadline
            )

        return self.session._step_with(
            call, observation, priority, timestamp_s, observation_id, tick, budget_s
        )

    def _attempt(
        self, address: str, request: session_pb2.StepRequest, deadline: float | None
    ) -> session_pb2.StepReply:
        if self._open is None or self._open.address != address:
            self.close()
            client = self.session.client
            self._open = _OpenStream(
                address, client.coordinators.stub(address), client.step_timeout_s
            )
        timeout_s = self.session.client.step_timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, _left_s(deadline))
            request.budget_ms = timeout_s * 1e3  # what is left of it for this attempt
        try:
            item = self._open.exchange(request, timeout_s)
        except RetryableFailure:
            self.close()  # a late answer on it must not be taken for the next step's
            raise
        if not item.HasField("error"):
            return item.reply
        error = item.error  # the stream itself is fine
        code = next((c.name for c in grpc.StatusCode if c.value[0] == error.code), "UNKNOWN")
        if error.HasField("status"):
            raise failure(code, error.message, details_of(error.status))
        seq = error.current_seq if error.reason == "seq_conflict" else None
        raise failure(code, error.message, ErrorDetails(error.reason, seq, error.retry_after_s))

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
