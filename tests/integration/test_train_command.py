"""`actionmesh train` as a command, in its own process: help, refusals, its outputs and the
signed checkpoint version it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import keygen, load_public_key
from service.model import weights
from service.model.action_model import ActionModel
from service.training.evaluate import JSON_FILE, PLOT_FILE
from tests.support.training import TINY

torch.set_num_threads(1)


def _actionmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_train_help() -> None:
    done = _actionmesh("train", "--help")
    assert done.returncode == 0
    assert "--flash-dir" in done.stdout and "--insecure" in done.stdout
    assert "--quick" in done.stdout and "--baseline-hidden" in done.stdout


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
    saved = json.loads((out / JSON_FILE).read_text())
    assert saved["model_version"] == version
    assert saved["baseline"]["hidden"] == TINY["baseline_hidden"]
    # measured through a real cluster (stages killed one by one), and the factor derived
    assert set(saved["cluster_p50_ms"]) == set(saved["modes"])
    assert all(p50 > 0 for p50 in saved["cluster_p50_ms"].values())
    full = saved["modes"]["full"]["p50_ms"]
    assert saved["latency_factor"] == saved["cluster_p50_ms"]["full"] / full
    assert "latency factor" in done.stdout
    assert "GRU baseline" in done.stdout
    assert LocalFlash(flash_dir, insecure=True).versions() == [version]
    assert "state_lost" in done.stdout and version in done.stdout


def test_train_signs_the_checkpoint_version(tmp_path: Path) -> None:
    private, public = keygen(tmp_path)
    out, flash_dir = tmp_path / "weights", tmp_path / "flash"
    quick = {**TINY, "iterations": 1, "head_iterations": 2, "student_iterations": 1}
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in quick.items()]
    flags.append("--no-cluster-latency")  # measured in test_train_end_to_end
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
