"""Test-side helpers that act as a robot controller and as the in-process reference."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import torch

from service import tensor_codec
from service.model.action_model import ActionModel
from service.proto import session_pb2, session_pb2_grpc


def observations(seed: int, steps: int, dim: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=gen) for _ in range(steps)]


def open_session(stub: session_pb2_grpc.SessionServiceStub, ttl_s: float = 0.0) -> str:
    reply = stub.OpenSession(
        session_pb2.OpenSessionRequest(ttl_s=ttl_s, client_id="test"), timeout=10
    )
    return str(reply.session_id)


def step_request(session_id: str, seq: int, obs: torch.Tensor) -> session_pb2.StepRequest:
    return session_pb2.StepRequest(
        session_id=session_id, seq=seq, observation=tensor_codec.encode(obs)
    )


def step(
    stub: session_pb2_grpc.SessionServiceStub, session_id: str, seq: int, obs: torch.Tensor
) -> session_pb2.StepReply:
    reply: session_pb2.StepReply = stub.Step(step_request(session_id, seq, obs), timeout=10)
    return reply


def reference_run(
    model: ActionModel, obs: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Actions and final per-stage states of one session run in-process, one step at a time."""
    states = model.fresh_states(1)
    actions = []
    for o in obs:
        action, states = model.step(o.unsqueeze(0), states)
        actions.append(action[0])
    return actions, [s[0] for s in states]


@dataclass
class Outcome:
    seq: int
    at: float  # time.monotonic() when the answer arrived
    code: str  # "OK" or the gRPC status name
    serve_mode: int = 0
    action: torch.Tensor | None = None


class SteppingRobot(threading.Thread):
    """A controller stepping one session at control rate; it retries a failed seq as is.

    Records every answer, so a test can check that no step was lost or applied twice.
    """

    RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

    def __init__(
        self, stub: session_pb2_grpc.SessionServiceStub, obs: list[torch.Tensor], period_s: float
    ) -> None:
        super().__init__(daemon=True)
        self.stub, self.obs, self.period_s = stub, obs, period_s
        self.session_id = open_session(stub)
        self.outcomes: list[Outcome] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def acked(self) -> int:
        return sum(o.code == "OK" for o in self.outcomes)

    def run(self) -> None:
        seq = 1
        try:
            while seq <= len(self.obs) and not self._stop_event.is_set():
                started = time.monotonic()
                try:
                    reply = self.stub.Step(
                        step_request(self.session_id, seq, self.obs[seq - 1]), timeout=2.0
                    )
                except grpc.RpcError as exc:
                    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
                    self.outcomes.append(Outcome(seq, time.monotonic(), code))
                    if code not in self.RETRYABLE:
                        raise
                else:
                    action = tensor_codec.decode(reply.action)
                    self.outcomes.append(
                        Outcome(seq, time.monotonic(), "OK", reply.serve_mode, action)
                    )
                    seq += 1
                self._stop_event.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
