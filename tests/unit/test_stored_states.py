"""A stored stage state no stage can run from (undecodable, wrong shape) is treated as lost:
rebuilt from the observation log (exactly) or reset (flagged), never sent to the shards, whose
refusal would have suspected every replica of the stage in turn."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from chaos.reference import observations, reference_run
from service.coordinator.routing.stage_client import RequestRefused
from service.coordinator.routing.stage_router import StageUnavailable
from service.coordinator.stored_states import readable
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2, stage_pb2, tensor_codec
from state.session import SessionId, StageIndex, StageState
from tests.support.in_process import InProcessCoordinator
from tests.unit.test_call_patience import FakeReplica, request, router_over

pytestmark = pytest.mark.timeout(60)

CFG = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
V1 = ActionModel(CFG).eval()
OBS = observations(seed=5, steps=12, dim=CFG.observation_dim)
REFERENCE = reference_run(V1, OBS)[0]
WRONG_SHAPE = tensor_codec.to_bytes(torch.zeros(CFG.memory_tokens + 1, CFG.d_model))
UNREADABLE = {
    "wrong shape": WRONG_SHAPE,
    "wrong dtype": tensor_codec.to_bytes(torch.zeros(CFG.memory_tokens, CFG.d_model).double()),
    "not finite": tensor_codec.to_bytes(torch.full((CFG.memory_tokens, CFG.d_model), float("nan"))),
    "not a tensor": b"\xff\x00 not a tensor",
}


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    built = InProcessCoordinator({"v1": V1}, serving=["v1"], catch_up_budget_s=1.0)
    yield built
    built.close()


def corrupt(coordinator: InProcessCoordinator, sid: str, stage: int, data: bytes) -> None:
    """Overwrite one stored stage state (keeping its seq), as a bad write or a bug would."""
    stored = coordinator.store._sessions[SessionId(sid)]
    states = dict(stored.record.stage_states)
    states[StageIndex(stage)] = StageState(states[StageIndex(stage)].seq, data)
    stored.record = dataclasses.replace(stored.record, stage_states=states)
    coordinator.engine.cache.drop(SessionId(sid))  # the next step loads it from the store


@pytest.mark.parametrize("data", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_state_is_not_readable(data: bytes) -> None:
    assert not readable(data, CFG)
    assert readable(b"", CFG)
    assert readable(tensor_codec.to_bytes(torch.zeros(CFG.memory_tokens, CFG.d_model)), CFG)


@pytest.mark.parametrize("data", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_stored_state_is_rebuilt_from_the_log_and_suspects_no_replica(
    coordinator: InProcessCoordinator, data: bytes
) -> None:
    sid = coordinator.open()
    for seq in (1, 2, 3):
        coordinator.step(sid, seq, OBS[seq - 1], timeout_s=5.0)
    corrupt(coordinator, sid, 1, data)
    answer = coordinator.step(sid, 4, OBS[3], timeout_s=5.0)
    assert answer.reply.serve_mode == session_pb2.SERVE_MODE_FULL
    assert answer.reply.replayed_steps == 3 and not answer.reply.state_reset
    assert torch.allclose(answer.action, REFERENCE[3], atol=1e-5), "not the never-corrupted answer"
    assert coordinator.router.healthy("v1", CFG.n_stages) == [True] * CFG.n_stages
    answer = coordinator.step(sid, 5, OBS[4], timeout_s=5.0)
    assert torch.allclose(answer.action, REFERENCE[4], atol=1e-5)


def test_an_unreadable_state_beyond_the_log_is_reset_and_said_so() -> None:
    coordinator = InProcessCoordinator(
        {"v1": V1}, serving=["v1"], catch_up_budget_s=1.0, log_depth=2
    )
    try:
        sid = coordinator.open()
        for seq in range(1, 6):
            coordinator.step(sid, seq, OBS[seq - 1], timeout_s=5.0)
        corrupt(coordinator, sid, 2, WRONG_SHAPE)
        answer = coordinator.step(sid, 6, OBS[5], timeout_s=5.0)
        assert answer.reply.state_reset, "the history is lost: the answer must say so"
        assert coordinator.router.healthy("v1", CFG.n_stages) == [True] * CFG.n_stages
    finally:
        coordinator.close()


class RefusingReplica(FakeReplica):
    def forward(
        self, request: stage_pb2.ForwardRequest, timeout_s: float
    ) -> stage_pb2.ForwardReply:
        self.timeouts.append(timeout_s)
        raise RequestRefused(f"stage {self.stage} at {self.address}: INVALID_ARGUMENT")


def test_a_request_a_replica_refuses_as_malformed_suspects_no_replica() -> None:
    """Every replica would refuse it: the stage fails for this step, no replica is blamed
    and no other is tried."""
    router, fakes = router_over({"a": False, "b": False}, usual_s=0.01)
    refusing = RefusingReplica(0, "addr-a", hung=False)
    fakes["addr-a"] = refusing
    with pytest.raises(StageUnavailable, match="refused the request as malformed"):
        router.forward(0, request(), 1e18)
    assert len(refusing.timeouts) == 1 and fakes["addr-b"].timeouts == []
    assert router.healthy("v1", 1) == [True]
