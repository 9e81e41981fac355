"""How long a stage call may take, and whom a timeout blames: the pure rule, and the router
applying it to replicas that hang (fake transports that time out at once: no clock waits)."""

from __future__ import annotations

import time

import pytest

from service.coordinator.routing.call_patience import Patience, UsualLatency
from service.coordinator.routing.replica_choice import BanPolicy
from service.coordinator.routing.stage_client import StageTimeout
from service.coordinator.routing.stage_router import StageRouter, StageUnavailable
from service.proto import stage_pb2
from state.leadership import ReplicaInfo
from tests.support.in_process import MutableRoutingTable

STAGE_TIMEOUT_S = 0.5
PATIENCE = Patience(multiple=6.0, min_s=0.15)


@pytest.mark.parametrize(
    ("usual_s", "time_left_s", "spare", "expected"),
    [
        (None, 0.49, True, 0.49),  # nothing measured yet: as before, the stage timeout
        (0.01, 0.49, True, 0.15),  # 6 x 10 ms is below the floor
        (0.05, 0.49, True, 0.30),  # 6 x 50 ms
        (0.2, 2.0, True, 0.5),  # never past the stage timeout
        (0.01, 0.2, True, 0.1),  # the floor gives way to leave half the time for the spare
        (0.02, 0.2, True, 0.12),  # but a fair time is always given when there is time
        (0.01, 0.49, False, 0.49),  # no spare: nothing gained by giving up early
        (0.01, 5.0, False, 0.5),
    ],
)
def test_a_call_waits_a_multiple_of_the_usual_latency_only_when_a_spare_can_take_over(
    usual_s: float | None, time_left_s: float, spare: bool, expected: float
) -> None:
    got = PATIENCE.timeout_s(usual_s, STAGE_TIMEOUT_S, time_left_s, spare)
    assert got == pytest.approx(expected)


def test_the_usual_latency_follows_successful_calls_smoothly() -> None:
    usual = UsualLatency()
    assert usual.of(0) is None
    usual.observe(0, 0.01)
    assert usual.of(0) == pytest.approx(0.01)
    usual.observe(0, 0.11)
    assert 0.01 < (usual.of(0) or 0) < 0.11
    assert usual.of(1) is None


class FakeReplica:
    """A stage replica that answers at once, or (hung) times out at once, recording the
    timeout each call was given."""

    def __init__(self, stage: int, address: str, hung: bool) -> None:
        self.stage, self.address, self.hung = stage, address, hung
        self.timeouts: list[float] = []

    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        self.timeouts.append(timeout_s)
        if self.hung:
            raise StageTimeout(f"stage {self.stage} at {self.address}: DEADLINE_EXCEEDED")
        return stage_pb2.ForwardReply(results=[stage_pb2.StageResult() for _ in request.items])

    def info(self, timeout_s: float) -> stage_pb2.InfoReply:
        return stage_pb2.InfoReply()

    def close(self) -> None:
        """Nothing to close."""


def router_over(
    hung: dict[str, bool], usual_s: float
) -> tuple[StageRouter, dict[str, FakeReplica]]:
    """Stage 0 with one replica per entry ("a" leads), the stage's usual latency measured."""
    table = MutableRoutingTable()
    table.update(add=[ReplicaInfo(0, rid, f"addr-{rid}", "v1") for rid in hung])
    fakes = {f"addr-{rid}": FakeReplica(0, f"addr-{rid}", h) for rid, h in hung.items()}
    router = StageRouter(
        table,
        STAGE_TIMEOUT_S,
        BanPolicy(0.5, 5.0),
        connect=lambda r: fakes[r.address],
        patience=PATIENCE,
    )
    router.usual.observe(0, usual_s)
    return router, fakes


def request() -> stage_pb2.ForwardRequest:
    return stage_pb2.ForwardRequest(items=[stage_pb2.StageItem(seq=1)], model_version="v1")


def test_a_hung_leader_is_left_for_the_standby_within_a_step_whose_deadline_is_the_stage_timeout() -> (
    None
):
    """The client's default deadline equals stage_timeout_s: the leader's call must be cut
    by patience, not by the step's deadline, so that it is blamed and the standby answers."""
    router, fakes = router_over({"a": True, "b": False}, usual_s=0.01)
    reply = router.forward(0, request(), time.monotonic() + 0.49)
    assert len(reply.results) == 1
    assert fakes["addr-a"].timeouts == [pytest.approx(0.15)]
    assert len(fakes["addr-b"].timeouts) == 1
    router.forward(0, request(), time.monotonic() + 0.49)  # the suspect is not tried first
    assert len(fakes["addr-a"].timeouts) == 1 and len(fakes["addr-b"].timeouts) == 2


def test_a_lone_replica_that_hangs_past_a_fair_time_is_suspected_whatever_the_deadline() -> None:
    router, _ = router_over({"a": True}, usual_s=0.01)
    with pytest.raises(StageUnavailable):
        router.forward(0, request(), time.monotonic() + 0.3)
    assert router.healthy("v1", 1) == [False], "the next steps must degrade, not wait for it"


def test_a_call_cut_by_a_deadline_shorter_than_a_fair_time_blames_no_one() -> None:
    router, _ = router_over({"a": True}, usual_s=0.05)  # fair: 6 x 50 ms = 0.3 s
    with pytest.raises(StageUnavailable, match="the step deadline ran out"):
        router.forward(0, request(), time.monotonic() + 0.1)
    assert router.healthy("v1", 1) == [True]
