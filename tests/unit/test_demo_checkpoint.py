"""The checkpoint `actionmesh demo` ships: intact (its version is its tensors' digest), nothing
but safetensors and JSON (never pickle), and every file in what a non-editable install holds."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
import torch

from service.bench.demo import DEMO_WEIGHTS, settings_for_weights
from service.model import weights
from service.runtime.command_settings import DemoSettings

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_checkpoint_is_intact_and_never_pickle() -> None:
    torch.set_num_threads(1)
    model, info = weights.load_model(DEMO_WEIGHTS)
    assert weights.model_version(model) == info.version, "model.json and the tensors disagree"
    names = {p.name for p in DEMO_WEIGHTS.iterdir()}
    stages = {weights.stage_file(k) for k in range(info.config.n_stages)}
    assert names == {weights.MANIFEST, weights.QUALITY_FILE, weights.STUDENT_FILE, *stages}
    quality = json.loads((DEMO_WEIGHTS / weights.QUALITY_FILE).read_text())
    assert quality["model_version"] == info.version


def test_the_package_data_holds_every_file_of_the_shipped_checkpoint() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    package = DEMO_WEIGHTS.parent  # service/bench
    patterns = package_data[".".join(package.relative_to(ROOT).parts)]
    for file in DEMO_WEIGHTS.iterdir():
        relative = file.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_the_demo_takes_its_stages_from_the_weights_and_refuses_others() -> None:
    stages = weights.read_info(DEMO_WEIGHTS).config.n_stages
    assert settings_for_weights(DemoSettings(), DEMO_WEIGHTS).stages == stages
    with pytest.raises(SystemExit, match=f"has {stages}"):
        settings_for_weights(DemoSettings(stages=stages + 1), DEMO_WEIGHTS)
