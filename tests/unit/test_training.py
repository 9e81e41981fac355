"""Training at a tiny size, in process: deterministic, better than untrained, writes its quality
table (the `actionmesh train` command: tests/integration/test_train_command.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from service.model.action_model import ActionModel
from service.training.evaluate import JSON_FILE, PLOT_FILE, evaluate
from tests.support.training import TASK, trained

torch.set_num_threads(1)
MODES = {"full", "early_exit_0", "early_exit_1", "fallback", "state_lost"}


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("*.safetensors"))
    }


def test_same_seed_same_weights(tiny: tuple[ActionModel, str, Path], tmp_path: Path) -> None:
    _, version, directory = tiny
    _, again = trained(tmp_path)
    assert again == version
    assert _digests(tmp_path) == _digests(directory)
    assert len(_digests(directory)) == 4  # three stages and the student


def test_trained_beats_untrained(tiny: tuple[ActionModel, str, Path]) -> None:
    model, _, _ = tiny
    untrained = ActionModel(model.cfg)
    before = evaluate(untrained, TASK, episodes=16, seed=7).modes
    after = evaluate(model, TASK, episodes=16, seed=7).modes
    for mode in MODES:
        assert after[mode].error < before[mode].error, mode


def test_quality_table_json_and_plot(tiny: tuple[ActionModel, str, Path], tmp_path: Path) -> None:
    model, version, _ = tiny
    table = evaluate(model, TASK, episodes=4, seed=11, version=version)
    table.save(tmp_path)
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert set(saved["modes"]) == MODES
    for quality in saved["modes"].values():
        assert set(quality) == {"error", "success", "p50_ms"}
        assert quality["error"] >= 0 and 0 <= quality["success"] <= 1 and quality["p50_ms"] > 0
    assert (saved["seed"], saved["episodes"], saved["model_version"]) == (11, 4, version)
    assert set(saved["targets"]) == {"early_exit_1", "fallback", "state_lost"}
    assert (tmp_path / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    assert "state_lost" in table.format()
