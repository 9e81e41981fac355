"""StreamSteps called directly: the stream's own deadline bounds each of its steps, as a unary
call's deadline bounds its step (and a robot's per-step budget still applies within it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest

from chaos.reference import observations, step_request
from service.coordinator.session_servicer import STEP_TIMEOUT_KEY, SessionServicer
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from tests.support.in_process import InProcessCoordinator

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=3, tokens=4, memory_tokens=1, n_stages=3)
STEP_TIMEOUT_S = 2.0  # the coordinator's cap when a call sets no shorter deadline


class StreamContext:
    """A stream call with `left_s` of its deadline left (None: no deadline)."""

    def __init__(self, left_s: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.left_s, self.metadata = left_s, metadata

    def time_remaining(self) -> float | None:
        return self.left_s

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    built = InProcessCoordinator({"v1": ActionModel(CFG).eval()}, serving=["v1"])
    yield built
    built.close()


def budgets_of_one_stream_step(coordinator: InProcessCoordinator, context: StreamContext) -> float:
    """The time the engine was given for the stream's one step."""
    given: list[float] = []
    engine = coordinator.engine
    step = engine.step

    def recording(*args: Any, **kwargs: Any) -> Any:
        given.append(args[4] - time.monotonic())  # (session, seq, obs, timestamp, deadline, ..)
        return step(*args, **kwargs)

    engine.step = recording  # type: ignore[method-assign]
    servicer = SessionServicer(engine, STEP_TIMEOUT_S, 1 << 20)
    sid = coordinator.open()
    request = step_request(sid, 1, observations(0, 1, CFG.observation_dim)[0])
    replies = list(servicer.StreamSteps(iter([request]), cast(grpc.ServicerContext, context)))
    assert len(replies) == 1  # answered, or refused in time (a loaded machine may be slow)
    assert len(given) == 1
    return given[0]


def test_a_streams_deadline_bounds_its_step(coordinator: InProcessCoordinator) -> None:
    assert budgets_of_one_stream_step(coordinator, StreamContext(0.3)) <= 0.3


def test_a_streams_deadline_bounds_its_step_below_the_robots_step_budget(
    coordinator: InProcessCoordinator,
) -> None:
    context = StreamContext(0.3, ((STEP_TIMEOUT_KEY, "1.0"),))
    assert budgets_of_one_stream_step(coordinator, context) <= 0.3


def test_the_robots_step_budget_bounds_a_step_of_a_longer_stream(
    coordinator: InProcessCoordinator,
) -> None:
    context = StreamContext(60.0, ((STEP_TIMEOUT_KEY, "0.4"),))
    assert budgets_of_one_stream_step(coordinator, context) <= 0.4


def test_a_stream_without_any_deadline_gets_the_coordinators_cap(
    coordinator: InProcessCoordinator,
) -> None:
    budget = budgets_of_one_stream_step(coordinator, StreamContext(None))
    assert 1.0 < budget <= STEP_TIMEOUT_S
