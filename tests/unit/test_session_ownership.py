"""With auth on, a session belongs to the identity that opened it: another identity is denied
every use of it (and learns nothing of it), an admin may use any; fair share is by identity;
an identity holds at most `sessions_per_identity` open sessions. The whole step path in this
process over the memory store (tests/support/in_process.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from fallback.priority import Priority
from service.coordinator.session_access import SessionAccess
from service.coordinator.step_errors import (
    NotAuthenticated,
    PermissionDenied,
    RateLimited,
    TooManySessions,
)
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.runtime.identity import Identity, Scope
from service.runtime.rate_limit import RateLimiter
from state.session import SessionId, SessionRecord
from tests.support.in_process import InProcessCoordinator
from tests.unit.test_identity import DIRECTORY, OPS_TOKEN, ROBOT_TOKEN, FakeContext

pytestmark = pytest.mark.timeout(60)

CFG = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
MODEL = ActionModel(CFG).eval()
ALICE = Identity("alice", frozenset({Scope.STEP}), "token")
BOB = Identity("bob", frozenset({Scope.STEP}), "token")
ADMIN = Identity("ops", frozenset({Scope.ADMIN}), "token")
OBS = torch.zeros(CFG.observation_dim)


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    running = InProcessCoordinator({"v1": MODEL}, serving=["v1"])
    yield running
    running.close()


def step(c: InProcessCoordinator, session_id: str, seq: int, caller: Identity) -> None:
    c.engine.step(session_id, seq, OBS, 0.0, time.monotonic() + 2.0, Priority.NORMAL, caller=caller)


def test_the_opener_owns_the_session_and_another_identity_is_denied_everything(
    coordinator: InProcessCoordinator,
) -> None:
    engine = coordinator.engine
    sid = engine.open(0.0, "claims-to-be-bob", 0, ALICE).session_id
    stored = coordinator.store.load(SessionId(sid))
    assert stored is not None and stored.owner == "alice"
    step(coordinator, sid, 1, ALICE)
    for use in (
        lambda: step(coordinator, sid, 2, BOB),
        lambda: step(coordinator, sid, 1, BOB),  # a retry would hand out the stored reply
        lambda: engine.get(sid, BOB),
        lambda: engine.close(sid, BOB),
    ):
        with pytest.raises(PermissionDenied) as denied:
            use()
        assert sid not in str(denied.value)
    assert engine.get(sid, ALICE).record.seq == 1  # bob's close closed nothing
    step(coordinator, sid, 2, ALICE)  # nor did bob's tries disturb alice's next step


def test_a_strangers_denied_step_leaves_the_owners_cached_session_in_place(
    coordinator: InProcessCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else any identity could make every step of another robot reload from the store."""
    sid = coordinator.engine.open(0.0, "", 0, ALICE).session_id
    step(coordinator, sid, 1, ALICE)  # committed here: cached for alice's next step
    for seq in (2, 1, 7):  # her next step, a retry, a skipped seq
        with pytest.raises(PermissionDenied):
            step(coordinator, sid, seq, BOB)
    loads: list[SessionId] = []
    load = coordinator.store.load

    def counted(session_id: SessionId) -> SessionRecord | None:
        loads.append(session_id)
        return load(session_id)

    monkeypatch.setattr(coordinator.store, "load", counted)
    step(coordinator, sid, 2, ALICE)
    assert loads == [], "alice's step reloaded her session: bob's denied steps evicted it"


def test_an_admin_may_use_and_close_any_session(coordinator: InProcessCoordinator) -> None:
    engine = coordinator.engine
    sid = engine.open(0.0, "", 0, ALICE).session_id
    step(coordinator, sid, 1, ADMIN)
    assert engine.get(sid, ADMIN).record.owner == "alice"
    assert engine.close(sid, ADMIN)
    assert coordinator.store.load(SessionId(sid)) is None


def test_a_session_opened_with_auth_off_is_only_an_admins_once_auth_is_on(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.engine.open(0.0, "alice", 0).session_id  # no caller: auth off
    with pytest.raises(PermissionDenied):
        coordinator.engine.get(sid, ALICE)
    assert coordinator.engine.get(sid, ADMIN).record.seq == 0


def test_auth_off_serves_any_caller_as_before(coordinator: InProcessCoordinator) -> None:
    sid = coordinator.open()
    coordinator.step(sid, 1, OBS)
    assert coordinator.engine.close(sid)


def test_fair_share_is_by_identity_not_by_the_claimed_client_id(
    coordinator: InProcessCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    shares: list[str] = []
    admitted = coordinator.engine.admission.admitted

    @contextmanager
    def recording(
        what: str, priority: Priority, client_id: str, deadline: float, best: float | None
    ) -> Iterator[None]:
        shares.append(client_id)
        with admitted(what, priority, client_id, deadline, best):
            yield

    monkeypatch.setattr(coordinator.engine.admission, "admitted", recording)
    sid = coordinator.engine.open(0.0, "bob", 0, ALICE).session_id
    step(coordinator, sid, 1, ALICE)
    unowned = coordinator.open()  # auth off: the claimed client_id, as before
    coordinator.step(unowned, 1, OBS)
    assert shares == ["alice", "robot"]


def test_an_identity_holds_at_most_its_session_limit_and_closing_frees_one(
    coordinator: InProcessCoordinator,
) -> None:
    engine = coordinator.engine
    engine.limits = dataclasses.replace(engine.limits, sessions_per_identity=2)
    first = engine.open(0.0, "", 0, ALICE).session_id
    engine.open(0.0, "", 0, ALICE)
    with pytest.raises(TooManySessions, match="sessions_per_identity"):
        engine.open(0.0, "", 0, ALICE)
    assert len(coordinator.store._sessions) == 2  # the refused one is not left behind
    engine.open(0.0, "", 0, BOB)  # another identity's count is its own
    assert engine.close(first, ALICE)
    engine.open(0.0, "", 0, ALICE)


def test_an_expired_session_no_longer_counts(coordinator: InProcessCoordinator) -> None:
    engine = coordinator.engine
    engine.limits = dataclasses.replace(engine.limits, sessions_per_identity=1)
    engine.open(0.05, "", 0, ALICE)
    time.sleep(0.1)
    engine.open(0.0, "", 0, ALICE)


def test_access_refuses_a_caller_without_credentials_or_without_a_session_scope() -> None:
    access = SessionAccess("token", DIRECTORY, None)
    with pytest.raises(NotAuthenticated):
        access.caller(FakeContext())
    checkpoint_only = Identity("ci", frozenset({Scope.CHECKPOINT}), "token")

    class OnlyCheckpoint:
        def by_token(self, token: str) -> Identity | None:
            return checkpoint_only

        def certificate_identity(self, name: str) -> Identity:
            return checkpoint_only

    with pytest.raises(PermissionDenied, match="needs step"):
        SessionAccess("token", OnlyCheckpoint(), None).caller(
            FakeContext(metadata=[("authorization", "Bearer anything")])
        )
    robot = access.caller(FakeContext(metadata=[("authorization", f"Bearer {ROBOT_TOKEN}")]))
    ops = access.caller(FakeContext(metadata=[("authorization", f"Bearer {OPS_TOKEN}")]))
    assert robot is not None and ops is not None and (robot.name, ops.name) == ("robot-7", "ops")


def test_steps_beyond_an_identitys_rate_are_refused_with_a_retry_hint() -> None:
    access = SessionAccess("token", DIRECTORY, RateLimiter(rate_per_s=1.0, burst=2))
    access.step_allowed(ALICE)
    access.step_allowed(ALICE)
    with pytest.raises(RateLimited, match="identity_steps_per_s") as limited:
        access.step_allowed(ALICE)
    assert 0 < limited.value.retry_after_s <= 1.0
    access.step_allowed(BOB)
    SessionAccess.open_door().step_allowed(None)


def test_a_retried_open_is_the_same_session_for_its_owner_and_never_anothers(
    coordinator: InProcessCoordinator,
) -> None:
    engine = coordinator.engine
    first = engine.open(0.0, "arm", 0, ALICE, request_id="r-1").session_id
    assert engine.open(0.0, "arm", 0, ALICE, request_id="r-1").session_id == first
    bobs = engine.open(0.0, "arm", 0, BOB, request_id="r-1").session_id
    assert bobs != first
    stored = coordinator.store.load(SessionId(bobs))
    assert stored is not None and stored.owner == "bob"
