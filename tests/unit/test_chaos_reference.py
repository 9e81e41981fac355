"""The chaos suite replays its references batched; each row must be that session's own run."""

from __future__ import annotations

import torch

from chaos.reference import observations, reference_with_exits, reference_with_exits_batch
from service.model.action_model import ActionModel
from service.model.config import ModelConfig


def test_a_batched_reference_equals_each_session_run_alone() -> None:
    model = ActionModel(
        ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
    )
    runs = [
        observations(seed, steps, model.cfg.observation_dim) for seed, steps in [(1, 12), (2, 7)]
    ]
    for run, (full, exits) in zip(runs, reference_with_exits_batch(model, runs), strict=True):
        want_full, want_exits = reference_with_exits(model, run)
        assert len(full) == len(run)
        for got, want in zip(full, want_full, strict=True):
            assert torch.allclose(got, want, atol=1e-5)
        for got_heads, want_heads in zip(exits, want_exits, strict=True):
            assert all(
                torch.allclose(g, w, atol=1e-5) for g, w in zip(got_heads, want_heads, strict=True)
            )
