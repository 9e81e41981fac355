"""The student's FALLBACK step and its warm-up on the observation log (the choice of serve
mode, with or without a quality table, is tests/unit/test_plan.py)."""

from __future__ import annotations

import torch

from service.coordinator.serve_modes import student_step
from service.model.config import ModelConfig
from service.model.student import Student
from service.proto import tensor_codec

CFG = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, student_hidden=16)


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
