"""The coordinator's choice of serve mode for weights without a quality table, and the
student's warm-up: pure functions, no processes."""

from __future__ import annotations

import pytest
import torch

from fallback.policy import Verdict
from fallback.priority import Priority
from service.coordinator.assets import VersionAssets
from service.coordinator.degrade import choose_mode, student_step
from service.model.config import ModelConfig
from service.model.student import Student
from service.proto import tensor_codec

CFG = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, student_hidden=16)


@pytest.mark.parametrize(
    ("healthy", "student", "verdict", "exit_stage"),
    [
        ([True, True, True], True, Verdict.FULL, None),
        ([True, True, False], True, Verdict.EARLY_EXIT, 1),
        ([True, False, True], True, Verdict.EARLY_EXIT, 0),
        ([False, True, True], True, Verdict.FALLBACK, None),
        ([False, True, True], False, Verdict.SHED, None),
    ],
)
def test_without_a_quality_table_the_deepest_healthy_exit_then_the_student(
    healthy: list[bool], student: bool, verdict: Verdict, exit_stage: int | None
) -> None:
    assets = VersionAssets(Student(CFG) if student else None, None)
    decision = choose_mode(healthy, 1.0, Priority.NORMAL, assets)
    assert (decision.verdict, decision.exit_stage) == (verdict, exit_stage)
    if verdict in (Verdict.EARLY_EXIT, Verdict.FALLBACK):
        assert decision.confidence == 0.0  # unmeasured, and the reply says so


def test_a_cold_student_warms_up_on_the_log_and_then_continues_from_its_state() -> None:
    torch.manual_seed(0)
    student = Student(CFG).eval()
    history = [torch.randn(CFG.observation_dim) for _ in range(6)]
    logged = [tensor_codec.to_bytes(o) for o in history[:5]]
    warm_action, warm_state = student_step(student, history[5], b"", logged)
    cold_action, _ = student_step(student, history[5], b"", [])
    hidden = student.fresh_state(1)
    with torch.no_grad():
        for o in history:
            want, hidden = student(o.unsqueeze(0), hidden)
    assert torch.allclose(warm_action, want[0], atol=1e-6)
    assert not torch.allclose(cold_action, want[0], atol=1e-3), "the history matters"
    nxt = torch.randn(CFG.observation_dim)
    action, _ = student_step(student, nxt, warm_state, logged)  # warm: the log is not replayed
    with torch.no_grad():
        want, _ = student(nxt.unsqueeze(0), hidden)
    assert torch.allclose(action, want[0], atol=1e-6)
