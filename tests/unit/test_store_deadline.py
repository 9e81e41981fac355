"""A step's store calls answer by the step's deadline (state.store.answer_by): the Redis store
against a server that accepts but never answers and one that refuses (plain sockets on
127.0.0.1, no redis-server), and the engine's step over the memory store. Calls outside
answer_by keep the store's own retry policy."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import torch
from prometheus_client import REGISTRY

from service.coordinator import error_status
from service.coordinator.engine import STORE_ANSWER_RESERVE_S, store_deadline
from service.coordinator.step_errors import StoreUnreachable
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from state.redis_store import DIRECT_RETRY, SENTINEL_RETRY, RedisSessionStore
from state.session import CommitOutcome, SessionId, SessionRecord, StepCommit
from state.store import DeadlineSpent, StoreUnavailable, answer_by, answer_deadline
from tests.support.in_process import InProcessCoordinator

pytestmark = pytest.mark.timeout(60)

SOCKET_TIMEOUT_S = 2.0  # well past the deadlines below: only the deadline can end those calls
DEADLINE_S = 0.2
# Generous: a loaded 2-core machine; a call that waited for its socket timeout takes >= 2 s.
MARGIN_S = 0.5
CFG = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
OBS = torch.zeros(CFG.observation_dim)


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port whose connections the kernel accepts but nobody ever reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture
def refused_port() -> int:
    """A port nobody listens on: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _give_ups(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("actionmesh_state_deadline_give_ups_total", labels) or 0.0


def _retries(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("actionmesh_state_retries_total", labels) or 0.0


def test_a_call_on_a_hung_server_gives_up_at_the_deadline_not_the_socket_timeout(
    hung_port: int,
) -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{hung_port}/0", socket_timeout_s=SOCKET_TIMEOUT_S)
    before = _give_ups("load")
    started = time.monotonic()
    with answer_by(started + DEADLINE_S), pytest.raises(StoreUnavailable, match="deadline"):
        store.load(SessionId("s" * 24))
    assert time.monotonic() - started < DEADLINE_S + MARGIN_S
    assert _give_ups("load") == before + 1
    store.close()


def test_no_retry_starts_after_the_deadline(refused_port: int) -> None:
    """Behind Sentinel the policy would retry for 15 s; a step's call stops at its deadline,
    every retry it made counted, and nothing goes on retrying after it gave up."""
    url = f"redis://127.0.0.1:{refused_port}/0"
    store = RedisSessionStore(url, socket_timeout_s=SOCKET_TIMEOUT_S, retry=SENTINEL_RETRY)
    before = _retries("load")
    started = time.monotonic()
    with answer_by(started + DEADLINE_S), pytest.raises(StoreUnavailable):
        store.load(SessionId("s" * 24))
    assert time.monotonic() - started < DEADLINE_S + MARGIN_S
    retried = _retries("load") - before
    assert retried >= 1  # a refused connection is retried while there is time
    time.sleep(2 * SENTINEL_RETRY.max_wait_s)  # longer than any backoff: a retry would show
    assert _retries("load") - before == retried
    store.close()


def test_a_deadline_already_passed_sends_nothing(hung_port: int) -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{hung_port}/0", socket_timeout_s=SOCKET_TIMEOUT_S)
    before = _give_ups("log_depth")
    # The step ran out of time, the store did not fail: the engine answers DEADLINE_EXCEEDED.
    with answer_by(time.monotonic() - 0.1), pytest.raises(DeadlineSpent, match="not sent"):
        store.log_depth(SessionId("s" * 24))
    assert _give_ups("log_depth") == before + 1
    store.close()


def test_calls_outside_a_step_keep_the_stores_retry_policy(refused_port: int) -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{refused_port}/0", socket_timeout_s=1.0)
    assert answer_deadline() is None
    with pytest.raises(StoreUnavailable, match=f"after {DIRECT_RETRY.attempts} attempt"):
        store.load(SessionId("s" * 24))
    store.close()


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    running = InProcessCoordinator({"v1": ActionModel(CFG).eval()}, serving=["v1"])
    yield running
    running.close()


def test_every_store_call_of_a_step_carries_the_steps_deadline_less_the_reserve(
    coordinator: InProcessCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, seen = coordinator.store, []
    load, commit = store.load, store.commit

    def loading(session_id: SessionId) -> SessionRecord | None:
        seen.append(("load", answer_deadline()))
        return load(session_id)

    def committing(session_id: SessionId, step: StepCommit) -> CommitOutcome:
        seen.append(("commit", answer_deadline()))
        return commit(session_id, step)

    sid = coordinator.open()
    monkeypatch.setattr(store, "load", loading)
    monkeypatch.setattr(store, "commit", committing)
    deadline = time.monotonic() + 1.0  # long enough for the whole reserve
    coordinator.engine.step(sid, 1, OBS, 0.0, deadline)
    assert seen == [
        ("load", deadline - STORE_ANSWER_RESERVE_S),
        ("commit", deadline - STORE_ANSWER_RESERVE_S),
    ]
    assert answer_deadline() is None  # not beyond the step
    coordinator.engine.get(sid)  # nor for a caller that is no step
    assert seen[-1] == ("load", None)


def test_a_short_step_reserves_a_share_of_its_time_not_the_whole_reserve() -> None:
    now = time.monotonic()
    assert now + 0.015 < store_deadline(now + 0.02) < now + 0.02  # 20 ms: most for the store
    assert store_deadline(now - 1.0) == now - 1.0  # past: nothing to reserve


def test_a_commit_given_up_is_unavailable_for_the_robot_and_its_retry_is_not_doubled(
    coordinator: InProcessCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit may have landed: the step is not acknowledged (UNAVAILABLE, reason
    store_unavailable, on which the client leaves the coordinator at once), and the retry of
    the same seq gets the stored reply."""
    store = coordinator.store
    commit = store.commit

    def lands_then_times_out(session_id: SessionId, step: StepCommit) -> CommitOutcome:
        commit(session_id, step)
        raise StoreUnavailable("no answer by the step's deadline; given up")

    sid = coordinator.open()
    monkeypatch.setattr(store, "commit", lands_then_times_out)
    with pytest.raises(StoreUnreachable) as refused:
        coordinator.step(sid, 1, OBS)
    assert error_status.status_of(refused.value).name == "UNAVAILABLE"
    assert error_status.reason_of(refused.value) == "store_unavailable"
    monkeypatch.setattr(store, "commit", commit)
    stored = store.load(SessionId(sid))
    assert stored is not None and stored.seq == 1
    again = coordinator.step(sid, 1, OBS)
    assert again.reply.SerializeToString() == stored.last_reply
    assert coordinator.step(sid, 2, OBS).reply.seq == 2
