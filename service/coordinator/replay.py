"""Bring a session's stage states level, or rebuild them on another model version, by
replaying its observation log.

Stages lag when steps were answered without them (a stage was down). A lagging stage's inputs at the missed steps are the earlier stages'
outputs at those steps, so replay runs the whole pipeline from the anchor: every stage's
state at the last level step, kept by the store while some stage lags. The result equals a
session that never saw the failure.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.proto import tensor_codec
from service.runtime import logs
from state.session import Anchor, SessionRecord, StageIndex, SwitchProgress
from state.store import SessionStore

log = logging.getLogger(__name__)

# Computes one step of one session from the given per-stage states; returns the new states.
# Raises ReplayOutOfTime when the step does not come back before the replay's time is up.
StepFn = Callable[[int, torch.Tensor, list[bytes]], list[bytes]]


class ReplayOutOfTime(Exception):
    """A replayed step was not computed within the time a replay may hold its step (a slow or
    cold replica, a queue): the replay stops with what it reached, the step goes on."""


@dataclass(frozen=True)
class LevelStates:
    states: list[bytes]  # per stage, all reflecting record.seq (b"" = fresh); [] if incomplete
    replayed_steps: int = 0
    reset: bool = False  # the log did not reach back: the states are fresh, history is lost
    # Counted in metrics by the caller once the step commits (a failed attempt is retried).
    progress: Anchor | None = None  # replay ran out of time here: the next one starts here

    @property
    def complete(self) -> bool:
        return self.progress is None


def level_states(
    record: SessionRecord,
    n_stages: int,
    store: SessionStore,
    step: StepFn,
    replay_until: float = math.inf,
    resume: Anchor | None = None,
) -> LevelStates:
    """Stages 0..n_stages-1 brought level with record.seq by replay from the stored anchor (or
    `resume`, this step's earlier progress). At `replay_until` (time.monotonic()) it stops and
    returns its progress, so a long lag is caught up over several steps."""
    current = record.stages(n_stages)
    if all(s.seq == record.seq for s in current):
        return LevelStates([s.data for s in current])
    anchor = resume or record.anchor
    logged = None
    if anchor is not None:
        logged = store.observations(record.session_id, anchor.seq + 1, record.seq)
    if anchor is None or logged is None:
        return _reset(record, n_stages)
    base = [anchor.states.get(StageIndex(k), b"") for k in range(n_stages)]
    states, done = _replay(anchor.seq + 1, logged, base, step, replay_until)
    log.info(
        "replayed %d steps after seq %d",
        done,
        anchor.seq,
        extra=logs.fields(session=record.session_id, seq=record.seq),
    )
    if done < len(logged):  # out of time: the rest at the next steps
        progress = Anchor(anchor.seq + done, {StageIndex(k): d for k, d in enumerate(states) if d})
        return LevelStates([], replayed_steps=done, progress=progress)
    return LevelStates(states, replayed_steps=done)


def _reset(record: SessionRecord, n_stages: int) -> LevelStates:
    log.warning(
        "stage states lag %s and the observation log does not reach back to the last level "
        "step: state reset",
        [s.seq for s in record.stages(n_stages)],
        extra=logs.fields(session=record.session_id, seq=record.seq),
    )
    return LevelStates([b""] * n_stages, reset=True)


@dataclass(frozen=True)
class Rebuilt:
    progress: SwitchProgress  # the new version's states; level once progress.seq == record.seq
    replayed_steps: int


def rebuild_states(
    record: SessionRecord,
    n_stages: int,
    store: SessionStore,
    step: StepFn,
    log_depth: int,
    target: str,
    progress: SwitchProgress | None,
    replay_until: float = math.inf,
) -> Rebuilt:
    """A chunk of a session's move to model version `target`: the logged observations replayed
    on it, resumed from `progress` if the log still reaches back to it, else from fresh states
    at the session's start while the log keeps all of it. When it does not, the states are
    fresh at the session's last step, not exact (the switching reply says `state_reset`):
    replaying the part of the history the log keeps would not be exact either.
    Stops at `replay_until` (time.monotonic()) after one step or more, or when a step runs out
    of time (`ReplayOutOfTime`)."""
    start = _resume_point(record, store, log_depth, target, progress)
    if start is None:
        log.warning(
            "session moves to model %s without its history (the observation log does not "
            "reach back): state reset",
            target,
            extra=logs.fields(session=record.session_id, seq=record.seq),
        )
        return Rebuilt(SwitchProgress(target, record.seq, {}, exact=False), 0)
    base, logged = start
    first = [base.states.get(StageIndex(k), b"") for k in range(n_stages)]
    states, done = _replay(base.seq + 1, logged, first, step, replay_until)
    reached = SwitchProgress(
        target, base.seq + done, {StageIndex(k): d for k, d in enumerate(states)}, base.exact
    )
    return Rebuilt(reached, done)


def _replay(
    first_seq: int, logged: list[bytes], states: list[bytes], step: StepFn, until: float
) -> tuple[list[bytes], int]:
    """The logged observations of seq first_seq onward replayed from `states` until `until`
    (time.monotonic()), at least one unless it runs out of time (`ReplayOutOfTime`): the
    states reached and how many steps that was."""
    for done, observation in enumerate(logged):
        if done and time.monotonic() >= until:
            return states, done
        try:
            states = step(first_seq + done, tensor_codec.from_bytes(observation), states)
        except ReplayOutOfTime:
            return states, done
    return states, len(logged)


def rebuild_start(
    record: SessionRecord, log_depth: int, target: str, progress: SwitchProgress | None
) -> SwitchProgress | None:
    """Where an exact rebuild on `target` resumes, with a log of the last `log_depth`
    observations: from `progress` while the log reaches back to it, else from fresh states
    at the session's start while the log keeps all of it; None when neither (the history
    before the log is lost). No I/O: the planner's view is built from it too."""
    if (
        progress is not None
        and (progress.version, progress.exact) == (target, True)
        and record.seq - log_depth <= progress.seq <= record.seq
    ):
        return progress
    if record.seq > log_depth:
        return None
    return SwitchProgress(target, 0, {}, exact=True)


def _resume_point(
    record: SessionRecord,
    store: SessionStore,
    log_depth: int,
    target: str,
    progress: SwitchProgress | None,
) -> tuple[SwitchProgress, list[bytes]] | None:
    """Where an exact rebuild on `target` starts, and the observations it replays from
    there; None when the log does not reach back far enough."""
    start = rebuild_start(record, log_depth, target, progress)
    if start is None:
        return None
    logged = store.observations(record.session_id, start.seq + 1, record.seq)  # [] at seq
    return None if logged is None else (start, logged)
