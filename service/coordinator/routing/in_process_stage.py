"""A stage replica in this process: the shard's own servicer over real `Stage` modules, behind
the same transport as a gRPC replica, with faults to inject (fail, hang, slow, wrong version).

It is the coordinator's in-process seam: tests build a whole step path (router, bans,
batcher, pipeline, engine) on it and run every branch in milliseconds.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass
from typing import NoReturn, cast

import grpc
import torch

from service.coordinator.routing.stage_client import StageTimeout, VersionRefused, unavailable_kind
from service.coordinator.step_errors import Unavailable
from service.model.stage import Stage
from service.proto import stage_pb2, tensor_codec
from service.shard.stage_servicer import StageServicer
from service.shard.torch_stage import TorchStage


class Fault(enum.Enum):
    NONE = "none"
    FAIL = "fail"  # every call fails at once (a dead or refusing process)
    HANG = "hang"  # every call runs out of its time (a SIGSTOPped process)
    SLOW = "slow"  # every call takes `delay_s` longer (an overloaded node)
    WRONG_VERSION = "wrong_version"  # every call is refused as another model version
    NON_FINITE = "non_finite"  # every call answers NaN states (a numerically broken stage)


@dataclass
class FaultSwitch:
    fault: Fault = Fault.NONE
    delay_s: float = 0.0


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name} ({details})")
        self.code = code


class _Context:
    """The part of grpc.ServicerContext the stage servicer uses."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)


_CONTEXT = cast(grpc.ServicerContext, _Context())


class InProcessStage:
    """Implements StageTransport by calling the shard's servicer directly."""

    def __init__(self, stage: Stage, model_version: str, address: str) -> None:
        self.stage, self.address = stage.index, address
        self.servicer = StageServicer(TorchStage(stage), model_version)
        self.faults = FaultSwitch()
        self.calls = 0
        self._lock = threading.Lock()

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        with self._lock:
            self.calls += 1
        fault, delay_s = self.faults.fault, self.faults.delay_s
        what = f"stage {self.stage} at {self.address}"
        if fault is Fault.FAIL:
            raise Unavailable(f"{what}: UNAVAILABLE (injected failure)")
        if fault is Fault.WRONG_VERSION:
            raise VersionRefused(f"{what}: FAILED_PRECONDITION (injected version refusal)")
        if fault is Fault.HANG or (fault is Fault.SLOW and delay_s >= timeout_s):
            time.sleep(max(0.0, timeout_s))
            raise StageTimeout(f"{what}: DEADLINE_EXCEEDED (injected {fault.value})")
        if fault is Fault.SLOW:
            time.sleep(delay_s)
        try:
            reply: stage_pb2.ForwardReply = self.servicer.Forward(request, _CONTEXT)
        except _Aborted as exc:
            raise unavailable_kind(exc.code)(f"{what}: {exc}") from exc
        if fault is Fault.NON_FINITE:
            for result in reply.results:
                state = tensor_codec.decode(result.state)
                result.state.CopyFrom(tensor_codec.encode(torch.full_like(state, math.nan)))
        return reply

    def info(self, timeout_s: float) -> stage_pb2.InfoReply:
        if self.faults.fault in (Fault.FAIL, Fault.HANG):
            raise Unavailable(f"stage {self.stage} at {self.address}: Info failed (injected)")
        reply: stage_pb2.InfoReply = self.servicer.Info(stage_pb2.InfoRequest(), _CONTEXT)
        return reply

    def close(self) -> None:
        """Nothing to release."""
