"""The footprint bench's weights: fresh, but with no two tensors alike (as trained ones)."""

from __future__ import annotations

import itertools

import torch

from service.bench.shard_footprint import _untied
from service.model.action_model import ActionModel
from service.model.config import ModelConfig

SMALL = ModelConfig(d_model=32, n_heads=2, n_layers=3, tokens=4)


def _equal_pairs(model: ActionModel) -> list[tuple[str, str]]:
    params = list(model.named_parameters())
    return [
        (a, b)
        for (a, x), (b, y) in itertools.combinations(params, 2)
        if x.shape == y.shape and torch.equal(x, y)
    ]


def test_a_fresh_model_has_equal_tensors_that_the_footprint_bench_unties() -> None:
    fresh = ActionModel(SMALL)
    assert _equal_pairs(fresh)  # zero-initialised residual outputs: what ONNX export dedups
    untied = _untied(ActionModel(SMALL))
    assert not _equal_pairs(untied)
    assert all(torch.isfinite(p).all() for p in untied.parameters())
