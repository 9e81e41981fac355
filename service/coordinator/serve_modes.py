"""Executing a step's plan (fallback.plan): FULL (every stage), EARLY_EXIT(k) (stages 0..k
and stage k's head), FALLBACK (the distilled student in this process), and CatchUp (replay of
the observation log, for lagging stages or a version switch). Nothing here commits or
decides: the engine plans, these compute, and a stage that fails comes back as a value."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
import torch

from fallback.plan import CATCH_UP_RESERVE, CatchUp, EarlyExit, Fallback, Full
from fallback.serve_mode import ServeMode
from service.coordinator.batcher import Batched, DynamicBatcher
from service.coordinator.pipeline import PipelineInput, PipelineOutput
from service.coordinator.replay import ReplayOutOfTime, StepFn, level_states, rebuild_states
from service.coordinator.routing.call_patience import UsualLatency
from service.coordinator.routing.stage_router import StageUnavailable
from service.coordinator.step_errors import DeadlineExceeded
from service.model.config import ModelConfig
from service.model.student import Student
from service.proto import array_codec, tensor_codec, tensor_pb2
from service.proto.array_codec import TensorDecodeError
from state.session import (
    Anchor,
    SessionRecord,
    StageIndex,
    StageState,
    SwitchProgress,
    short_id,
)
from state.store import SessionStore

# With a student to fall back on, a FULL or EARLY_EXIT answer's pipeline is waited for only
# until this long before the step's deadline: a pipeline that is late (a replica paused
# mid-call, a batch queued behind it, a loaded machine) then costs the robot a labelled
# FALLBACK answer in time rather than the step. The reserve is a few times the student's
# usual answer time, at least MIN_S, at most SHARE of the time left.
FALLBACK_RESERVE_MIN_S = 0.05
FALLBACK_RESERVE_SHARE = 0.25
FALLBACK_RESERVE_MULTIPLE = 3.0


@dataclass(frozen=True, kw_only=True)
class StepInput:
    """One step being served: what every serve mode needs."""

    record: SessionRecord
    seq: int
    observation: torch.Tensor
    timestamp_s: float
    deadline: float  # time.monotonic()
    version: str  # the session's version for this step (the switch target is in the plan)
    received: float  # time.perf_counter()
    load_s: float  # loading the session from the store took this long
    observation_id: int = 0  # the client's, echoed in the reply
    tick: int = 0  # the robot's control tick of the observation: the reply's first_action_tick

    def time_left_s(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(kw_only=True)
class StepWork:
    """What a step's catch-ups did so far; committed with its answer whatever mode answers."""

    states: list[bytes]  # the session's version, per stage (b"": fresh)
    switch: SwitchProgress | None  # the switch target's states, when a switch is under way
    replayed_steps: int = 0
    reset: bool = False  # history was lost (the log did not reach back)
    anchor: Anchor | None = None  # an unfinished catch-up's progress: the next starts here
    tried: list[str] = field(default_factory=list)  # what failed under this step, for messages


@dataclass(frozen=True, kw_only=True)
class Computed:
    """A step's answer before it is committed."""

    mode: ServeMode
    confidence: float
    exit_stage: int = 0
    version: str  # the version that answered; the session moves when it is not its own
    reset: bool = False  # computed from fresh states: the session's history is lost
    done: Batched[PipelineOutput]
    stage_states: dict[StageIndex, StageState]  # the stages this step advanced
    student: StageState | None = None


@dataclass(frozen=True, kw_only=True)
class StudentFailed:
    """The student could not answer this step (never answered nor committed)."""

    detail: str


@dataclass(frozen=True, kw_only=True)
class StageFailed:
    """No replica of `stage` of `version` could serve within the step. late: the pipeline as a
    whole missed the time before the student's reserve (the step treats it as stage 0 out)."""

    version: str
    stage: int
    detail: str
    late: bool = False


class ServeModes:
    def __init__(
        self,
        store: SessionStore,
        batcher: DynamicBatcher[PipelineInput, PipelineOutput],
        model: ModelConfig,
        log_depth: int,
    ) -> None:
        self.store, self.batcher, self.model, self.log_depth = store, batcher, model, log_depth
        self._passes = UsualLatency()  # per depth: one step through the pipeline, queue included
        self._student = UsualLatency()  # key 0: one FALLBACK answer, a cold warm-up included

    def pass_s(self) -> float:
        """The usual time of one step through every stage (what one replayed step costs),
        0 until one was measured."""
        return self._passes.of(self.model.n_stages) or 0.0

    def answer(
        self,
        step: StepInput,
        plan: Full | EarlyExit | Fallback,
        work: StepWork,
        student: Student | None,
    ) -> Computed | StageFailed | StudentFailed:
        if isinstance(plan, Fallback):
            assert student is not None, "the planner answers FALLBACK only with a student"
            return self._fallback(step, student, plan.confidence)
        if isinstance(plan, EarlyExit):
            depth, version, states = plan.stage + 1, step.version, work.states
            mode, confidence, exit_stage = ServeMode.EARLY_EXIT, plan.confidence, plan.stage
        else:
            depth, version = self.model.n_stages, plan.version
            states = [b""] * depth if plan.fresh else _states_on(version, work, depth)
            mode, confidence, exit_stage = ServeMode.FULL, 1.0, 0
        reserve_s = self._fallback_reserve_s(step) if student is not None else 0.0
        ran = self._run(step, version, states, depth, reserve_s)
        if isinstance(ran, StageFailed):
            return ran
        done, advanced = ran
        return Computed(
            mode=mode,
            confidence=confidence,
            exit_stage=exit_stage,
            version=version,
            reset=isinstance(plan, Full) and plan.fresh,
            done=done,
            stage_states=advanced,
        )

    def catch_up(self, step: StepInput, plan: CatchUp, work: StepWork) -> bool | StageFailed:
        """Replay toward the session's last step within the plan's budget; True once level."""
        started = time.monotonic()
        until = started + plan.budget_s
        # Replay stops at `until` after a step or more; no replayed step may run past this.
        held = max(until, started + (step.deadline - started) * (1 - CATCH_UP_RESERVE))
        replay = self._replay_fn(step, plan.version, plan.depth, held)
        try:
            if plan.version != step.version:
                return self._switch_chunk(step, plan.version, replay, until, work)
            level = level_states(step.record, plan.depth, self.store, replay, until, work.anchor)
        except StageUnavailable as exc:
            return StageFailed(version=plan.version, stage=exc.stage, detail=str(exc))
        work.replayed_steps += level.replayed_steps
        work.reset = work.reset or level.reset
        if not level.complete:
            work.anchor = level.progress if plan.depth == self.model.n_stages else work.anchor
            return False
        work.states[: plan.depth] = level.states
        return True

    def _switch_chunk(
        self, step: StepInput, target: str, replay: StepFn, until: float, work: StepWork
    ) -> bool:
        rebuilt = rebuild_states(
            step.record,
            self.model.n_stages,
            self.store,
            replay,
            self.log_depth,
            target,
            work.switch,
            until,
        )
        work.switch = rebuilt.progress
        work.replayed_steps += rebuilt.replayed_steps
        return rebuilt.progress.seq == step.record.seq

    def _fallback(
        self, step: StepInput, student: Student, confidence: float
    ) -> Computed | StudentFailed:
        """The student answers; no stage advances. A cold student warms up on the log."""
        record = step.record
        warm = record.student is not None and record.student.seq == record.seq
        state = record.student.data if warm and record.student is not None else b""
        warm_up: list[bytes] = []
        if not warm and record.seq > 0 and self.log_depth:
            first = max(1, record.seq - self.log_depth + 1)
            warm_up = self.store.observations(record.session_id, first, record.seq) or []
        started = time.perf_counter()
        action, new_state = student_step(student, step.observation, state, warm_up)
        if not (
            torch.isfinite(action).all()
            and torch.isfinite(tensor_codec.from_bytes(new_state)).all()
        ):
            return StudentFailed(detail="the student answered non-finite values")
        took_ms = (time.perf_counter() - started) * 1e3
        self._student.observe(0, took_ms / 1e3)
        done = Batched(PipelineOutput(action, [], [took_ms], [took_ms]), 0.0, 1)
        return Computed(
            mode=ServeMode.FALLBACK,
            confidence=confidence,
            version=step.version,
            done=done,
            stage_states={},
            student=StageState(step.seq, new_state),
        )

    def _fallback_reserve_s(self, step: StepInput) -> float:
        usual = self._student.of(0) or 0.0
        wanted = max(FALLBACK_RESERVE_MIN_S, FALLBACK_RESERVE_MULTIPLE * usual)
        return min(wanted, FALLBACK_RESERVE_SHARE * max(0.0, step.time_left_s()))

    def _run(
        self, step: StepInput, version: str, states: list[bytes], depth: int, reserve_s: float
    ) -> tuple[Batched[PipelineOutput], dict[StageIndex, StageState]] | StageFailed:
        """The step through stages 0..depth-1; the states it advanced, tagged with its seq.
        Waited for until `reserve_s` before the step's deadline: later, no stage's result can
        be used for this step (the same as stage 0 failing), and the reserve is the student's."""
        answer_by = step.deadline - reserve_s
        item = PipelineInput(
            step.record.session_id, step.seq, step.observation, states, answer_by, version, depth
        )
        try:
            done = self.compute(item, answer_by)
        except (StageUnavailable, DeadlineExceeded) as exc:
            if reserve_s and time.monotonic() >= answer_by:
                return StageFailed(
                    version=version,
                    stage=0,
                    detail=f"the pipeline was late, {reserve_s * 1e3:.0f} ms before the step's "
                    f"deadline (kept for the student): {exc}",
                    late=True,
                )
            if isinstance(exc, DeadlineExceeded):
                raise
            return StageFailed(version=version, stage=exc.stage, detail=str(exc))
        bad = _first_nonfinite(done.value)
        if bad is not None:  # never answered, never committed: that stage is out for this step
            return StageFailed(version=version, stage=bad, detail=f"stage {bad}: non-finite output")
        advanced = {StageIndex(k): StageState(step.seq, d) for k, d in enumerate(done.value.states)}
        return done, advanced

    def compute(self, item: PipelineInput, deadline: float) -> Batched[PipelineOutput]:
        """`item` through its stages, waited for until `deadline` (time.monotonic())."""
        submitted = time.monotonic()
        future = self.batcher.submit(item)
        try:
            done = future.result(timeout=max(0.0, deadline - submitted))
            self._passes.observe(item.depth or self.model.n_stages, time.monotonic() - submitted)
            return done
        except FutureTimeout as exc:
            future.cancel()  # still queued: keep it out of a batch (it no longer counts)
            raise DeadlineExceeded(
                f"session={short_id(item.session_id)} seq={item.seq}: not computed before the "
                "deadline; the session was not advanced, retry the same seq"
            ) from exc

    def _replay_fn(self, step: StepInput, version: str, depth: int, held: float) -> StepFn:
        """One replayed step, its stage calls included, given until `held` at most (the
        step's reserve stays for its answer): a pass that takes longer (a cold replica, a long
        queue) ends the replay where it got to, rather than eating the step's deadline."""
        deadline = min(held, step.deadline)

        def replay_step(s: int, obs: torch.Tensor, states: list[bytes]) -> list[bytes]:
            item = PipelineInput(step.record.session_id, s, obs, states, deadline, version, depth)
            try:
                output = self.compute(item, deadline).value
            except DeadlineExceeded as exc:  # still queued or in a batch at `held`
                raise ReplayOutOfTime(f"replaying seq {s} on {version}") from exc
            except StageUnavailable as exc:
                if time.monotonic() < deadline:
                    raise
                raise ReplayOutOfTime(f"replaying seq {s} on {version}: {exc}") from exc
            bad = _first_nonfinite(output)
            if bad is not None:
                raise StageUnavailable(bad, f"stage {bad}: non-finite output replaying seq {s}")
            return output.states

        return replay_step


def _first_nonfinite(output: PipelineOutput) -> int | None:
    """The first stage whose new state, or whose action (the last stage run), is not finite."""
    for k, state in enumerate(output.states):
        if not _finite(state):
            return k
    if not bool(torch.isfinite(output.action).all()):
        return len(output.states) - 1
    return None


def _finite(state: bytes) -> bool:
    """Whether an encoded state's values are all finite, read in place (no copy) when numpy
    has its dtype; TensorDecodeError for a malformed one, as tensor_codec.from_bytes."""
    message = tensor_pb2.Tensor.FromString(state)
    try:
        values = array_codec.decode(message)
    except TensorDecodeError:  # malformed (raised again below), or bfloat16
        return bool(torch.isfinite(tensor_codec.decode(message)).all())
    return bool(np.isfinite(values).all())


def _states_on(version: str, work: StepWork, n_stages: int) -> list[bytes]:
    """The states to run `version` from: the switch's rebuilt ones, else the session's own."""
    progress = work.switch
    if progress is None or progress.version != version:
        return work.states
    return [progress.states.get(StageIndex(k), b"") for k in range(n_stages)]


@torch.no_grad()
def student_step(
    student: Student, observation: torch.Tensor, state: bytes, warm_up: Sequence[bytes]
) -> tuple[torch.Tensor, bytes]:
    """One FALLBACK answer. A cold student (`state` empty) first runs over the logged
    observations `warm_up` (oldest first), so that it answers with the session's history."""
    hidden = tensor_codec.from_bytes(state).unsqueeze(0) if state else student.fresh_state(1)
    if not state:
        for logged in warm_up:
            _, hidden = student(tensor_codec.from_bytes(logged).unsqueeze(0), hidden)
    action, hidden = student(observation.unsqueeze(0), hidden)
    return action[0], tensor_codec.to_bytes(hidden[0])
