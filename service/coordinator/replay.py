"""Bring a session's stage states level before a step, by replaying its observation log.

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
from state.session import Anchor, SessionRecord, StageIndex
from state.store import SessionStore

log = logging.getLogger(__name__)

# Computes one step of one session from the given per-stage states; returns the new states.
StepFn = Callable[[int, torch.Tensor, list[bytes]], list[bytes]]


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
) -> LevelStates:
    """Stages 0..n_stages-1 brought level with record.seq. A replay that reaches
    `replay_until` (time.monotonic()) stops there and returns its progress instead, so that a
    long lag is caught up over several steps rather than never within one step's deadline
    (progress is only kept for a replay of every stage: the anchor holds them all)."""
    current = record.stages(n_stages)
    if all(s.seq == record.seq for s in current):
        return LevelStates([s.data for s in current])
    anchor = record.anchor
    logged = None
    if anchor is not None:
        logged = store.observations(record.session_id, anchor.seq + 1, record.seq)
    if anchor is None or logged is None:
        log.warning(
            "session=%s seq=%d stage states lag %s and the observation log does not reach back "
            "to the last level step: state reset",
            record.session_id,
            record.seq,
            [s.seq for s in current],
        )
        return LevelStates([b""] * n_stages, reset=True)
    states = [anchor.states.get(StageIndex(k), b"") for k in range(n_stages)]
    for i, observation in enumerate(logged):
        if i and time.monotonic() >= replay_until:
            seq = anchor.seq + i
            log.info(
                "session=%s replayed seq %d..%d of %d; the rest at the next steps",
                record.session_id,
                anchor.seq + 1,
                seq,
                record.seq,
            )
            progress = Anchor(seq, {StageIndex(k): d for k, d in enumerate(states) if d})
            return LevelStates([], replayed_steps=i, progress=progress)
        states = step(anchor.seq + 1 + i, tensor_codec.from_bytes(observation), states)
    log.info(
        "session=%s replayed seq %d..%d to bring stages level",
        record.session_id,
        anchor.seq + 1,
        record.seq,
    )
    return LevelStates(states, replayed_steps=len(logged))


def rebuild_states(
    record: SessionRecord, n_stages: int, store: SessionStore, step: StepFn, log_depth: int
) -> LevelStates:
    """States for a session moving to another model version: the logged observations replayed
    from fresh states through the new version. Exact when the log reaches back to seq 1;
    otherwise the history before the log is lost (reset=True), and the state is rebuilt from
    the last `log_depth` observations, which is far better than a fresh one."""
    first = max(1, record.seq - log_depth + 1)
    logged = store.observations(record.session_id, first, record.seq) if log_depth else None
    if logged is None:
        log.warning(
            "session=%s seq=%d moves to another model version without its observation log: "
            "state reset",
            record.session_id,
            record.seq,
        )
        return LevelStates([b""] * n_stages, reset=True)
    states = [b""] * n_stages
    for i, observation in enumerate(logged):
        states = step(first + i, tensor_codec.from_bytes(observation), states)
    return LevelStates(states, replayed_steps=len(logged), reset=first > 1)
