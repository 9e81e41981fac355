"""Two coordinators that briefly disagree on the desired version (one saw a rollback, one not
yet) do not move a session back and forth: the session keeps the revision of the desired
version that moved it, and a coordinator whose view is older leaves it where it is. One
in-process coordinator plays both views (its routing table's desired version and revision
are set by the test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.reference import observations
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from state.session import SessionId
from tests.support.in_process import InProcessCoordinator

pytestmark = pytest.mark.timeout(60)

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=3, tokens=4, memory_tokens=1, n_stages=3)
MODELS = {
    "v1": ActionModel(CFG).eval(),
    "v2": ActionModel(CFG.model_copy(update={"seed": 1})).eval(),
}
OBS = observations(seed=7, steps=40, dim=CFG.observation_dim)


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    built = InProcessCoordinator(MODELS, serving=["v1", "v2"], catch_up_budget_s=1.0)
    yield built
    built.close()


def sees_desired(coordinator: InProcessCoordinator, version: str, revision: int) -> None:
    coordinator.table.update(desired=version, desired_revision=revision)
    coordinator.catalog_refresh()


def step_until_on(coordinator: InProcessCoordinator, sid: str, seq: int, version: str) -> int:
    """Step until an answer comes from `version` (a switch replays over a few steps)."""
    for _ in range(10):
        seq += 1
        if coordinator.step(sid, seq, OBS[seq - 1], timeout_s=5.0).reply.model_version == version:
            return seq
    raise AssertionError(f"not on {version} after 10 steps")


def test_a_coordinator_with_an_older_desired_version_does_not_move_the_session_back(
    coordinator: InProcessCoordinator,
) -> None:
    sees_desired(coordinator, "v1", 10)
    sid = coordinator.open()
    seq = step_until_on(coordinator, sid, 0, "v1")
    sees_desired(coordinator, "v2", 20)  # promote: this coordinator sees it
    seq = step_until_on(coordinator, sid, seq, "v2")
    record = coordinator.store.load(SessionId(sid))
    assert record is not None and (record.model_version, record.version_revision) == ("v2", 20)
    sees_desired(coordinator, "v1", 10)  # another coordinator, still before the promote
    for _ in range(5):
        seq += 1
        answer = coordinator.step(sid, seq, OBS[seq - 1], timeout_s=5.0)
        assert answer.reply.model_version == "v2", "a lagging view moved the session back"
    sees_desired(coordinator, "v1", 30)  # a rollback after the promote: followed
    step_until_on(coordinator, sid, seq, "v1")
