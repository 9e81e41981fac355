"""How one step is computed in each serve mode: FULL (every stage, after bringing lagging
stages level by replay), EARLY_EXIT(k) (stages 0..k and stage k's head), FALLBACK (the
distilled student in this process). Nothing here commits: the engine does."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from service.coordinator.batcher import Batched, DynamicBatcher
from service.coordinator.degrade import student_step
from service.coordinator.pipeline import PipelineInput, PipelineOutput
from service.coordinator.replay import LevelStates, StepFn, level_states, rebuild_states
from service.coordinator.step_errors import DeadlineExceeded, Unavailable
from service.model.config import ModelConfig
from service.model.student import Student
from state.session import Anchor, SessionRecord, StageIndex, StageState
from state.store import SessionStore, StoreUnavailable

# While catching up a long lag, a step stops replaying once this much of its time is left, so
# that it can still be answered (degraded) and commit its progress.
CATCH_UP_RESERVE = 0.5


@dataclass(frozen=True)
class StepInput:
    """One step being served: what every serve mode needs."""

    record: SessionRecord
    seq: int
    observation: torch.Tensor
    timestamp_s: float
    deadline: float  # time.monotonic()
    version: str
    received: float  # time.perf_counter()

    def time_left_s(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Computed:
    """A step's answer before it is committed."""

    mode: str  # FULL / EARLY_EXIT / FALLBACK
    confidence: float
    exit_stage: int
    done: Batched[PipelineOutput]
    level: LevelStates  # how the states were brought level first (replay, reset)
    switching: bool  # the session moves to another model version with this step
    stage_states: dict[StageIndex, StageState]  # the stages this step advanced
    student: StageState | None = None
    anchor: Anchor | None = None  # replay progress to keep (a lag caught up over several steps)


class Lagging(Exception):
    """Some stages lag by more than one step's replay budget; `level.progress` is how far the
    replay got. The step is answered degraded from the stages that are level."""

    def __init__(self, level: LevelStates) -> None:
        super().__init__(f"replayed {level.replayed_steps} steps, not level yet")
        self.level = level


class ServeModes:
    def __init__(
        self,
        store: SessionStore,
        batcher: DynamicBatcher[PipelineInput, PipelineOutput],
        model: ModelConfig,
        log_depth: int,
        catch_up_budget_s: float,
    ) -> None:
        self.store, self.batcher, self.model = store, batcher, model
        self.log_depth, self.catch_up_budget_s = log_depth, catch_up_budget_s

    def full(self, step: StepInput, catch_up: bool = True) -> Computed:
        """Raises Lagging when the lagging stages cannot be replayed level in this step
        (within the catch-up budget; with catch_up=False, within the step's time)."""
        record, n = step.record, self.model.n_stages
        replay_step = self._replay_fn(step, n)
        switching = record.seq > 0 and step.version != record.model_version
        with store_errors():
            if switching:
                level = rebuild_states(record, n, self.store, replay_step, self.log_depth)
            else:
                until = self._replay_until(step, self.catch_up_budget_s if catch_up else math.inf)
                level = level_states(record, n, self.store, replay_step, until)
        if not level.complete:
            raise Lagging(level)
        done, states = self._run(step, level.states, n)
        return Computed("FULL", 1.0, 0, done, level, switching, states)

    def early_exit(
        self, step: StepInput, exit_stage: int, confidence: float, progress: LevelStates | None
    ) -> Computed:
        """Stages 0..exit_stage advance; the later ones lag until they are back (replay)."""
        record, depth = step.record, exit_stage + 1
        _no_switch(step)
        with store_errors():
            level = level_states(record, depth, self.store, self._replay_fn(step, depth))
        done, states = self._run(step, level.states, depth)
        return Computed(
            "EARLY_EXIT",
            confidence,
            exit_stage,
            done,
            _caught_up(level, progress),
            False,
            states,
            anchor=progress.progress if progress else None,
        )

    def fallback(
        self, step: StepInput, student: Student, confidence: float, progress: LevelStates | None
    ) -> Computed:
        """The student answers; no stage advances. A cold student warms up on the log."""
        record = step.record
        _no_switch(step)
        warm = record.student is not None and record.student.seq == record.seq
        state = record.student.data if warm and record.student is not None else b""
        warm_up: list[bytes] = []
        if not warm and record.seq > 0 and self.log_depth:
            first = max(1, record.seq - self.log_depth + 1)
            with store_errors():
                warm_up = self.store.observations(record.session_id, first, record.seq) or []
        started = time.perf_counter()
        action, new_state = student_step(student, step.observation, state, warm_up)
        done = Batched(PipelineOutput(action, [], [(time.perf_counter() - started) * 1e3]), 0.0, 1)
        return Computed(
            "FALLBACK",
            confidence,
            0,
            done,
            _caught_up(LevelStates([]), progress),
            False,
            {},
            student=StageState(step.seq, new_state),
            anchor=progress.progress if progress else None,
        )

    def _run(
        self, step: StepInput, states: list[bytes], depth: int
    ) -> tuple[Batched[PipelineOutput], dict[StageIndex, StageState]]:
        """The step through stages 0..depth-1; the states it advanced, tagged with its seq."""
        item = PipelineInput(
            step.record.session_id,
            step.seq,
            step.observation,
            states,
            step.deadline,
            step.version,
            depth,
        )
        done = self.compute(item, step.deadline)
        advanced = {StageIndex(k): StageState(step.seq, d) for k, d in enumerate(done.value.states)}
        return done, advanced

    def compute(self, item: PipelineInput, deadline: float) -> Batched[PipelineOutput]:
        future = self.batcher.submit(item)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout as exc:
            future.cancel()  # still queued: keep it out of a batch (it no longer counts)
            raise DeadlineExceeded(
                f"session={item.session_id} seq={item.seq}: not computed before the deadline; "
                "the session was not advanced, retry the same seq"
            ) from exc

    @staticmethod
    def _replay_until(step: StepInput, budget_s: float) -> float:
        """Replay may use the budget, and never the reserve the step needs after."""
        now, left = time.monotonic(), step.time_left_s()
        return min(now + budget_s, now + left * (1 - CATCH_UP_RESERVE))

    def _replay_fn(self, step: StepInput, depth: int) -> StepFn:
        def replay_step(s: int, obs: torch.Tensor, states: list[bytes]) -> list[bytes]:
            item = PipelineInput(
                step.record.session_id, s, obs, states, step.deadline, step.version, depth
            )
            return self.compute(item, step.deadline).value.states

        return replay_step


def _no_switch(step: StepInput) -> None:
    """A session moves to another model version only by a FULL step, which rebuilds every
    stage's state on it: a degraded answer in between would mix versions."""
    if step.record.seq > 0 and step.version != step.record.model_version:
        raise Unavailable(
            f"session={step.record.session_id}: moving to model {step.version} needs every "
            "stage; the session was not advanced, retry the same seq"
        )


def _caught_up(level: LevelStates, progress: LevelStates | None) -> LevelStates:
    """The reply reports the replay done in this step, whichever mode answered."""
    if progress is None:
        return level
    return LevelStates(level.states, level.replayed_steps + progress.replayed_steps, level.reset)


@contextmanager
def store_errors() -> Iterator[None]:
    """Turns an unreachable store into Unavailable: the step was not advanced."""
    try:
        yield
    except StoreUnavailable as exc:
        raise Unavailable(f"session store unavailable: {exc}; retry the same seq") from exc
