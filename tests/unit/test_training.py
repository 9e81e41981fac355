"""Training at a tiny size, in process: deterministic, better than untrained, writes its quality
table (the `actionmesh train` command: tests/integration/test_train_command.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.student import Student
from service.runtime.command_settings import QUICK_TRAINING, TrainSettings
from service.training.baseline import train_baseline
from service.training.evaluate import JSON_FILE, PLOT_FILE, evaluate
from tests.support.training import TASK, TINY, trained

torch.set_num_threads(1)
MODES = {"full", "early_exit_0", "early_exit_1", "fallback", "state_lost"}
TARGETS = {"early_exit_0", "early_exit_1", "fallback", "state_lost", "full_success"}
TARGETS |= {"full_vs_baseline"}


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
    assert set(saved["targets"]) == TARGETS - {"full_vs_baseline"}  # no baseline given
    assert "baseline" not in saved
    assert (tmp_path / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    assert "state_lost" in table.format()


def test_baseline_is_trained_and_reported_beside_the_modes(
    tiny: tuple[ActionModel, str, Path], tmp_path: Path
) -> None:
    model, version, _ = tiny
    settings = TrainSettings.model_validate({**TINY, "memory_iterations": 40})  # a GRU is cheap
    gru = train_baseline(model.cfg, TASK, settings)
    assert gru.hidden_size == TINY["baseline_hidden"]
    assert _digests_of(gru) == _digests_of(train_baseline(model.cfg, TASK, settings))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = Student(gru_config(model)).eval()
    untrained = evaluate(model, TASK, episodes=8, seed=7, baseline=fresh)
    table = evaluate(model, TASK, episodes=8, seed=7, version=version, baseline=gru)
    assert table.baseline is not None and untrained.baseline is not None
    assert table.baseline.error < untrained.baseline.error
    table.save(tmp_path)
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert set(saved["targets"]) == TARGETS
    assert saved["baseline"] == {
        "error": table.baseline.error,
        "success": table.baseline.success,
        "hidden": TINY["baseline_hidden"],
    }
    ratio = saved["targets"]["full_vs_baseline"]["ratio"]
    assert ratio == table.modes["full"].error / table.baseline.error
    assert "GRU baseline" in table.format()


def gru_config(model: ActionModel) -> ModelConfig:
    return model.cfg.model_copy(update={"student_hidden": TINY["baseline_hidden"]})


def _digests_of(module: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in module.state_dict().items()}


def test_quick_size_fills_in_what_is_not_given() -> None:
    quick = TrainSettings.model_validate({"quick": True, "d_model": 48})
    assert quick.d_model == 48  # given explicitly: wins
    assert quick.n_layers == QUICK_TRAINING["n_layers"]
    assert quick.memory_iterations == QUICK_TRAINING["memory_iterations"]
    assert TrainSettings().d_model == 256  # the default size without --quick


def test_cluster_latencies_and_their_factor_go_into_the_table(
    tiny: tuple[ActionModel, str, Path], tmp_path: Path
) -> None:
    model, version, _ = tiny
    table = evaluate(model, TASK, episodes=2, seed=11, version=version)
    assert table.latency_factor is None and "latency_factor" not in table.to_json()
    served = {name: 2.0 + k for k, name in enumerate(sorted(MODES))}
    measured = dataclasses.replace(table, cluster_p50_ms=served)
    measured.save(tmp_path)
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert saved["cluster_p50_ms"] == served
    assert saved["latency_factor"] == served["full"] / table.modes["full"].p50_ms
    assert "latency factor" in measured.format()
