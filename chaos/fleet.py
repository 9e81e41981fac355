"""Simulated robots stepping sessions at control rate, as a controller would: a failed step
(UNAVAILABLE, DEADLINE_EXCEEDED) is retried with the same seq. Used by the bench and the tests.

SteppingRobot is deliberately raw: one coordinator, no failover, every answer recorded, so that
tests see exactly what the server said. ClientRobot is a controller on the client library
(service/client/), with its timeouts, recording every attempt the same way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import torch

from actionmesh_client.proto_names import serve_mode_value
from actionmesh_client.session_client import STEP_TIMEOUT_S, Priority
from service.client import (
    ActionMeshClient,
    ClientTls,
    ServiceUnavailable,
    Session,
    StepResult,
    StepShed,
    StepStream,
)
from service.proto import session_pb2, session_pb2_grpc, tensor_codec

RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
DETAIL_CHARS = 300  # of a failed step's message kept in its Outcome


@dataclass(frozen=True)
class Outcome:
    seq: int
    at: float  # time.monotonic() when the answer arrived
    latency_s: float
    code: str  # "OK" or the gRPC status name
    serve_mode: int = 0
    action: torch.Tensor | None = None
    model_version: str = ""
    state_reset: bool = False
    exit_stage: int = 0
    confidence: float = 0.0
    detail: str = ""  # a failed step: what the server said, or that the robot's deadline passed


class Robot(threading.Thread):
    """Steps one session through `observations`, one per period, until stopped or done; a
    failed step is resent with the same seq.

    Records every answer, so a caller can check that no step was lost or applied twice.
    Subclasses say how a step is sent (`_step`) and what a run opens and closes around it.
    """

    session_id: str

    def __init__(self, observations: list[torch.Tensor], period_s: float) -> None:
        super().__init__(daemon=True)
        self.obs, self.period_s = observations, period_s
        self.outcomes: list[Outcome] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def acked(self) -> int:
        return sum(o.code == "OK" for o in self.outcomes)

    def _step(self, seq: int) -> Outcome:
        raise NotImplementedError

    def _begin(self) -> None:
        """Before the first step, in the robot's thread."""

    def _end(self) -> None:
        """After the last step (or the error that ended the run), in the robot's thread."""

    def run(self) -> None:
        seq = 1
        try:
            self._begin()
            while seq <= len(self.obs) and not self._stop_event.is_set():
                started = time.monotonic()
                outcome = self._step(seq)
                self.outcomes.append(outcome)
                seq += outcome.code == "OK"
                self._stop_event.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        except BaseException as exc:  # surfaced to the caller through .error
            self.error = exc
        finally:
            self._end()


class SteppingRobot(Robot):
    """A robot on the raw session stubs: one coordinator, every status as the server sent it."""

    def __init__(
        self,
        stub: session_pb2_grpc.SessionServiceStub,
        observations: list[torch.Tensor],
        period_s: float,
        step_timeout_s: float = 2.0,
        streaming: bool = False,
        wait_replicas: int = 0,
    ) -> None:
        """streaming: step over one StreamSteps stream (the normal control-loop mode) rather
        than unary Step calls; the server's step_timeout_s then bounds each step."""
        super().__init__(observations, period_s)
        self.stub = stub
        self.step_timeout_s, self.streaming = step_timeout_s, streaming
        self._outbox: queue.SimpleQueue[session_pb2.StepRequest | None] = queue.SimpleQueue()
        self._replies: Iterator[session_pb2.StreamStepsReply] | None = None
        request = session_pb2.OpenSessionRequest(client_id="robot", wait_replicas=wait_replicas)
        opened = stub.OpenSession(request, timeout=10)
        self.session_id = str(opened.session_id)

    def _send(self, request: session_pb2.StepRequest) -> session_pb2.StepReply:
        """One step, unary or over the stream; raises _StepFailed with the status name."""
        if self._replies is None:
            try:
                reply: session_pb2.StepReply = self.stub.Step(request, timeout=self.step_timeout_s)
            except grpc.RpcError as exc:
                if not isinstance(exc, grpc.Call):
                    raise _StepFailed("UNKNOWN", str(exc)) from exc
                raise _StepFailed(exc.code().name, exc.details() or "") from exc
            return reply
        self._outbox.put(request)
        item = next(self._replies)
        if item.HasField("error"):
            raise _StepFailed(grpc_code_name(item.error.code), item.error.message)
        return item.reply

    def _step(self, seq: int) -> Outcome:
        request = session_pb2.StepRequest(
            session_id=self.session_id, seq=seq, observation=tensor_codec.encode(self.obs[seq - 1])
        )
        sent = time.monotonic()
        try:
            reply = self._send(request)
        except _StepFailed as exc:
            if exc.code not in RETRYABLE:
                raise
            now = time.monotonic()
            return Outcome(seq, now, now - sent, exc.code, detail=exc.detail[:DETAIL_CHARS])
        now = time.monotonic()
        action = tensor_codec.decode(reply.action)
        return Outcome(
            seq,
            now,
            now - sent,
            "OK",
            reply.serve_mode,
            action,
            reply.model_version,
            reply.state_reset,
            reply.exit_stage,
            reply.confidence,
        )

    def _requests(self) -> Iterator[session_pb2.StepRequest]:
        while (request := self._outbox.get()) is not None:
            yield request

    def _begin(self) -> None:
        if self.streaming:
            self._replies = self.stub.StreamSteps(self._requests())

    def _end(self) -> None:
        self._outbox.put(None)  # ends the stream, if any


class ClientRobot(Robot):
    """A robot controller on the client library (ActionMeshClient with its default step
    timeout unless told otherwise), stepping unary or over one stream (StepStream).

    Every attempt is recorded: the client is made with max_attempts=1 and the robot resends
    the same seq itself, so a failure the library would retry (and the robot feel as a late
    action) shows as a failed outcome. A resent seq carries the first attempt's timestamp, so
    that the stored reply of a step committed after the robot gave up is taken as its answer.
    """

    def __init__(
        self,
        address: str | list[str],
        observations: list[torch.Tensor],
        period_s: float,
        streaming: bool = False,
        step_timeout_s: float | None = None,
        wait_replicas: int = 0,
        priority: Priority = Priority.NORMAL,
        tls: ClientTls | None = None,
    ) -> None:
        """address: one coordinator, or every one (the client fails over between them);
        step_timeout_s: None keeps the client library's default; tls: mutual TLS."""
        super().__init__(observations, period_s)
        self.streaming, self.priority = streaming, priority
        addresses = [address] if isinstance(address, str) else list(address)
        self.client = ActionMeshClient(
            addresses,
            max_attempts=1,
            client_id="robot",
            step_timeout_s=STEP_TIMEOUT_S if step_timeout_s is None else step_timeout_s,
            tls=tls,
        )
        self.session: Session = self.client.open_session(wait_replicas=wait_replicas)
        self.session_id = self.session.session_id
        self._stream: StepStream | None = None
        self._timestamps: dict[int, float] = {}

    def _begin(self) -> None:
        if self.streaming:
            self._stream = self.session.stream()

    def _end(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self.client.close()

    def _step(self, seq: int) -> Outcome:
        assert self.session.seq == seq - 1, f"the session is at {self.session.seq}, not {seq - 1}"
        timestamp = self._timestamps.setdefault(seq, time.time())
        stepper = self._stream or self.session
        sent = time.monotonic()
        try:
            # One observation_id per seq: a step resent after a failure matches its stored reply.
            result: StepResult = stepper.step(
                self.obs[seq - 1],
                priority=self.priority,
                timestamp_s=timestamp,
                observation_id=seq,
            )
        except ServiceUnavailable as exc:
            now = time.monotonic()
            return Outcome(seq, now, now - sent, exc.code, detail=str(exc)[:DETAIL_CHARS])
        except StepShed as exc:
            now = time.monotonic()
            return Outcome(
                seq, now, now - sent, "RESOURCE_EXHAUSTED", detail=str(exc)[:DETAIL_CHARS]
            )
        now = time.monotonic()
        if result.seq != seq:
            raise AssertionError(f"sent seq {seq}, acknowledged {result.seq}")
        return Outcome(
            seq,
            now,
            now - sent,
            "OK",
            serve_mode_value(result.serve_mode.value),
            torch.from_numpy(result.action),
            result.model_version,
            result.state_reset,
            result.exit_stage,
            result.confidence,
        )


class _StepFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def grpc_code_name(code: int) -> str:
    """The name of a numeric gRPC status code, as a StepError carries it."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
