"""`actionmesh train` at a tiny size: deterministic, better than untrained, writes its outputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import keygen, load_public_key
from service.config import TrainSettings
from service.model import weights
from service.model.action_model import ActionModel
from service.training.cli import model_config
from service.training.quality import JSON_FILE, PLOT_FILE, evaluate
from service.training.task import TaskConfig
from service.training.train import train

torch.set_num_threads(1)
TASK = TaskConfig()
TINY = {
    "d_model": 32,
    "n_heads": 2,
    "n_layers": 3,
    "tokens": 4,
    "memory_tokens": 2,
    "student_hidden": 16,
    "iterations": 6,
    "batch_episodes": 4,
    "distill_episodes": 8,
    "head_iterations": 20,
    "student_iterations": 10,
    "eval_episodes": 8,
}
MODES = {"full", "early_exit_0", "early_exit_1", "fallback", "state_lost"}


def _trained(directory: Path) -> tuple[ActionModel, str]:
    settings = TrainSettings.model_validate(TINY)
    model = ActionModel(model_config(settings))
    train(model, TASK, settings)
    return model, weights.save(model, directory).version


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("*.safetensors"))
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActionModel, str, Path]:
    directory = tmp_path_factory.mktemp("tiny")
    model, version = _trained(directory)
    return model, version, directory


def test_same_seed_same_weights(tiny: tuple[ActionModel, str, Path], tmp_path: Path) -> None:
    _, version, directory = tiny
    _, again = _trained(tmp_path)
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


def _actionmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_train_help() -> None:
    done = _actionmesh("train", "--help")
    assert done.returncode == 0
    assert "--flash-dir" in done.stdout and "--insecure" in done.stdout


def test_train_refuses_unsigned_flash_without_insecure(tmp_path: Path) -> None:
    done = _actionmesh("train", "--output-dir", str(tmp_path / "w"), "--flash-dir", str(tmp_path))
    assert done.returncode != 0
    assert "--insecure" in done.stderr
    assert not (tmp_path / "w").exists()


def test_train_end_to_end(tiny: tuple[ActionModel, str, Path], tmp_path: Path) -> None:
    out, flash_dir = tmp_path / "weights", tmp_path / "flash"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    done = _actionmesh(
        "train", "--output-dir", str(out), "--flash-dir", str(flash_dir), "--insecure", *flags
    )
    assert done.returncode == 0, done.stderr
    version = weights.read_info(out).version
    assert version == tiny[1]  # the same weights as trained in this process
    for name in ("model.json", "student.safetensors", JSON_FILE, PLOT_FILE):
        assert (out / name).is_file(), name
    assert json.loads((out / JSON_FILE).read_text())["model_version"] == version
    assert LocalFlash(flash_dir, insecure=True).versions() == [version]
    assert "state_lost" in done.stdout and version in done.stdout


def test_train_signs_the_checkpoint_version(tmp_path: Path) -> None:
    private, public = keygen(tmp_path)
    out, flash_dir = tmp_path / "weights", tmp_path / "flash"
    quick = {**TINY, "iterations": 1, "head_iterations": 2, "student_iterations": 1}
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in quick.items()]
    done = _actionmesh(
        "train",
        "--output-dir",
        str(out),
        "--flash-dir",
        str(flash_dir),
        "--signing-key",
        str(private),
        *flags,
    )
    assert done.returncode == 0, done.stderr
    version = weights.read_info(out).version
    flash = LocalFlash(flash_dir, [load_public_key(public)])
    assert flash.manifest(version).signature is not None
    assert flash.verify(version).ok
