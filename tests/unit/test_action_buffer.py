"""The action buffer, driven tick by tick with a scripted session: chunks play in order, the
next is asked for in time and only once, overlaps merge as configured, stale actions are
dropped, a dry queue holds or stops, and every event is told."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch

from service.client.action_buffer import (
    ActionBuffer,
    BufferConfig,
    Event,
    Merge,
    Notice,
    Source,
    WhenDry,
)
from service.client.client_errors import ActionMeshClientError, InvalidObservation
from service.client.session_client import StepResult

H, J = 4, 2
OBS = np.zeros(3, np.float32)


def chunk(base: float) -> torch.Tensor:
    """Action i of the chunk is base + i on every joint."""
    return torch.tensor([[base + i] * J for i in range(H)], dtype=torch.float32)


class Scripted:
    """A session whose replies the test hands out, and a background runner it drives."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []
        self.sent: list[torch.Tensor] = []
        self.replies: list[StepResult | ActionMeshClientError] = []
        self.seq = 0

    def step(self, observation: torch.Tensor) -> StepResult:
        self.sent.append(observation)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def reply(self, base: float, version: str = "v1", reset: bool = False) -> None:
        self.seq += 1
        self.replies.append(
            StepResult(
                self.seq, chunk(base), "FULL", 0, 1.0, version, 1.0, 1, 0.0, state_reset=reset
            )
        )

    def run_pending(self) -> None:
        jobs = list(self.pending)
        self.pending.clear()  # the buffer holds this list's append
        for job in jobs:
            job()


def make(session: Scripted, notices: list[Notice] | None = None, **config: object) -> ActionBuffer:
    return ActionBuffer(
        session.step,
        J,
        BufferConfig(**config),  # type: ignore[arg-type]
        on_event=None if notices is None else notices.append,
        run_in_background=session.pending.append,
    )


def test_chunks_play_in_order_and_the_next_is_asked_for_once_before_the_queue_runs_out() -> None:
    session = Scripted()
    buffer = make(session, refill_below=2)
    first = buffer.tick(OBS)  # nothing yet: zeros, and the first step goes out
    assert first.source is Source.IDLE and not first.action.any()
    assert len(session.pending) == 1
    session.reply(10.0)
    session.run_pending()  # chunk for ticks 0..3 arrives before tick 1; tick 0 has passed
    played = [buffer.tick(OBS) for _ in range(2)]
    assert [c.action[0] for c in played] == [11.0, 12.0]
    assert all(c.source is Source.CHUNK and c.serve_mode == "FULL" for c in played)
    assert len(session.pending) == 1, "one action left (< refill_below): the next is asked for"
    buffer.tick(OBS)
    assert len(session.pending) == 1, "not twice while one is in flight"


def test_a_late_chunk_drops_the_actions_for_ticks_already_played() -> None:
    session = Scripted()
    buffer = make(session)
    buffer.tick(OBS)  # tick 0 asks
    buffer.tick(OBS)
    buffer.tick(OBS)  # ticks 1 and 2 pass while the step is out
    session.reply(20.0)
    session.run_pending()
    assert buffer.queued == 1 and buffer.tick(OBS).action[0] == 23.0


@pytest.mark.parametrize(("merge", "want"), [(Merge.LATEST, 101.0), (Merge.AVERAGE, 56.5)])
def test_overlapping_chunks_merge_as_configured(merge: Merge, want: float) -> None:
    session = Scripted()
    buffer = make(session, refill_below=4, merge=merge, new_weight=0.5)
    buffer.tick(OBS)
    session.reply(10.0)
    session.run_pending()  # ticks 1..3 queued: 11, 12, 13
    buffer.tick(OBS)  # tick 1 plays 11; 2 left < 4: asks with tick 1's observation
    session.reply(100.0)  # its chunk is for ticks 1..4: 100 (past), 101, 102, 103
    session.run_pending()
    got = buffer.tick(OBS).action[0]  # tick 2: queued 12, new 101
    assert got == pytest.approx(want)


def test_a_dry_queue_holds_the_last_command_and_says_so_once() -> None:
    session, notices = Scripted(), []
    buffer = make(session, notices, refill_below=1, when_dry=WhenDry.HOLD)
    buffer.tick(OBS)
    session.reply(10.0)
    session.run_pending()
    played = [buffer.tick(OBS) for _ in range(3)]  # 11, 12, 13; the next step is out
    assert [c.action[0] for c in played] == [11.0, 12.0, 13.0]
    held = [buffer.tick(OBS) for _ in range(3)]  # the step never returns
    assert all(c.source is Source.HOLD and c.action[0] == 13.0 for c in held)
    assert [n.event for n in notices].count(Event.DRY) == 1


def test_a_dry_queue_set_to_stop_ramps_the_last_command_down_to_zero() -> None:
    session = Scripted()
    buffer = make(session, refill_below=1, when_dry=WhenDry.STOP, stop_ticks=4)
    buffer.tick(OBS)
    session.reply(0.0)
    session.run_pending()
    for _ in range(3):
        last = buffer.tick(OBS)
    assert last.action[0] == 3.0
    ramp = [buffer.tick(OBS) for _ in range(5)]
    assert [c.action[0] for c in ramp] == pytest.approx([2.25, 1.5, 0.75, 0.0, 0.0])
    assert all(c.source is Source.STOP for c in ramp)


def test_a_failed_step_is_told_and_the_next_tick_asks_again_with_its_own_observation() -> None:
    session, notices = Scripted(), []
    buffer = make(session, notices)
    buffer.tick(OBS)
    session.replies.append(ActionMeshClientError("no coordinator answered", "UNAVAILABLE"))
    session.run_pending()
    assert [n.event for n in notices] == [Event.STEP_FAILED]
    newer = np.full(3, 7.0, np.float32)
    buffer.tick(newer)
    session.reply(1.0)
    session.run_pending()
    assert torch.equal(session.sent[-1], torch.from_numpy(newer))


@pytest.mark.parametrize(
    "error",
    [
        InvalidObservation("observation has NaN at index [0]", "INVALID_ARGUMENT"),
        ActionMeshClientError("session=x not found", "NOT_FOUND"),
    ],
)
def test_an_error_the_session_cannot_go_on_from_is_raised_by_the_next_tick(
    error: ActionMeshClientError,
) -> None:
    session = Scripted()
    buffer = make(session)
    buffer.tick(OBS)
    session.replies.append(error)
    session.run_pending()
    with pytest.raises(type(error), match=re.escape(str(error))):
        buffer.tick(OBS)


def test_a_chunk_of_another_model_version_replaces_the_queue_and_is_told() -> None:
    session, notices = Scripted(), []
    buffer = make(session, notices, refill_below=4)
    buffer.tick(OBS)
    session.reply(10.0, version="v1")
    session.run_pending()
    buffer.tick(OBS)  # asks again
    session.reply(50.0, version="v2", reset=True)
    session.run_pending()
    command = buffer.tick(OBS)
    assert command.model_version == "v2" and command.action[0] == 51.0
    events = [n.event for n in notices]
    assert Event.VERSION_CHANGED in events and Event.STATE_RESET in events


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="refill_below"):
        BufferConfig(refill_below=0)


def test_wait_idle_is_true_once_the_step_in_flight_is_back() -> None:
    session = Scripted()
    buffer = make(session)
    assert buffer.wait_idle(0.0)
    buffer.tick(OBS)
    assert not buffer.wait_idle(0.0)
    session.reply(1.0)
    session.run_pending()
    assert buffer.wait_idle(0.0)


def test_an_unexpected_failure_of_a_step_is_told_and_the_buffer_asks_again() -> None:
    session, notices = Scripted(), []
    buffer = make(session, notices)
    buffer.tick(OBS)
    session.replies.append(RuntimeError("a bug below the buffer"))  # type: ignore[arg-type]
    session.run_pending()
    assert [n.event for n in notices] == [Event.STEP_FAILED]
    assert "RuntimeError" in notices[0].detail and buffer.wait_idle(0.0)
    buffer.tick(OBS)
    assert len(session.pending) == 1, "not stuck waiting for the lost step"
