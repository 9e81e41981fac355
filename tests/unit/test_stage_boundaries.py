"""Explicit stage boundaries: any contiguous split, carried in the config, and the even split
(the default) keeps every existing config's fingerprint and model version."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=5, tokens=4, memory_tokens=1, n_stages=3)


def test_boundaries_give_each_stage_its_layer_range() -> None:
    cfg = CFG.model_copy(update={"stage_boundaries": (1, 4)})
    cfg = ModelConfig.model_validate(cfg.model_dump())
    assert [cfg.layer_range(k) for k in range(3)] == [(0, 1), (1, 4), (4, 5)]
    model = ActionModel(cfg)
    assert [len(model.stage(k).blocks) for k in range(3)] == [1, 3, 1]


def test_the_even_split_is_written_as_before() -> None:
    assert "stage_boundaries" not in CFG.model_dump()
    # Pinned: the fingerprint of the default config before explicit boundaries existed.
    assert ModelConfig().fingerprint() == "121ad02ab545"
    explicit = CFG.model_copy(update={"stage_boundaries": (2, 4)})
    assert [explicit.layer_range(k) for k in range(3)] == [CFG.layer_range(k) for k in range(3)]
    assert explicit.fingerprint() != CFG.fingerprint()  # a chosen split is part of the model


@pytest.mark.parametrize("bounds", [(2,), (3, 3), (0, 2), (2, 5), (4, 2)])
def test_bad_boundaries_are_refused(bounds: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="stage_boundaries"):
        ModelConfig.model_validate({**CFG.model_dump(), "stage_boundaries": bounds})


def test_stages_loaded_from_disk_with_explicit_boundaries_match_the_whole_model(
    tmp_path: Path,
) -> None:
    """What shards load (one stage each, from the saved config) chains to the in-process
    reference's answer."""
    cfg = ModelConfig.model_validate({**CFG.model_dump(), "stage_boundaries": [3, 4]})
    model = ActionModel(cfg)
    weights.save(model, tmp_path)
    obs = torch.randn(2, cfg.observation_dim)
    action, _ = model.step(obs, model.fresh_states(2))
    x = obs
    with torch.no_grad():
        for k in range(cfg.n_stages):
            stage, info = weights.load_stage(tmp_path, k)
            assert (stage.layer_start, stage.layer_end) == cfg.layer_range(k)
            x, _ = stage(x, stage.fresh_memory(2))
        chained = stage.action(x)
    assert info.config == cfg and info.version == weights.model_version(model)
    assert torch.allclose(action, chained, atol=1e-6)
    assert info.version != weights.model_version(ActionModel(CFG))
