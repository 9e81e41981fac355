"""The I/O-free parts of a degraded step: which mode serves (the policy of fallback/, or a
plain rule for weights without a quality table), and the student's step with its warm-up."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fallback.policy import Decision, Reason, StepConditions, Verdict, decide
from fallback.priority import Priority
from service.coordinator.assets import VersionAssets
from service.model.student import Student
from service.proto import tensor_codec


def choose_mode(
    healthy: Sequence[bool], time_left_s: float, priority: Priority, assets: VersionAssets
) -> Decision:
    """The policy when the version ships a quality table; else FULL when whole, then the
    deepest healthy exit head, then the student, each degraded answer with confidence 0
    (unmeasured: an untrained model's exits say nothing about their quality)."""
    if assets.policy is not None:
        decision = decide(StepConditions(healthy, time_left_s, priority), assets.policy)
        if decision.verdict is Verdict.FALLBACK and assets.student is None:
            return Decision(Verdict.SHED, Reason.NOTHING_FITS, detail="no student loaded")
        return decision
    if all(healthy):
        return Decision(Verdict.FULL, Reason.HEALTHY, confidence=1.0)
    prefix = next((k for k, ok in enumerate(healthy) if not ok), len(healthy))
    if prefix > 0:
        return Decision(Verdict.EARLY_EXIT, Reason.STAGE_DOWN, exit_stage=prefix - 1)
    if assets.student is not None:
        return Decision(Verdict.FALLBACK, Reason.STAGE_DOWN)
    return Decision(Verdict.SHED, Reason.NOTHING_FITS, detail="stage 0 down and no student")


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
