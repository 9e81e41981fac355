"""Weights on disk as safetensors (one file per stage, one for the student) + model.json.

Never pickle. The model version is derived from the config and the tensors' bytes, so the
same seed and config always give the same version on every node.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.stage import Stage
from service.model.student import Student

MANIFEST = "model.json"


def stage_file(stage: int) -> str:
    return f"stage-{stage}.safetensors"


STUDENT_FILE = "student.safetensors"
QUALITY_FILE = "quality.json"  # the offline quality table of `actionmesh train`, when trained


@dataclass(frozen=True)
class WeightsInfo:
    config: ModelConfig
    version: str


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def model_version(model: ActionModel) -> str:
    digest = hashlib.sha256(model.cfg.fingerprint().encode())
    for name, tensor in sorted(_tensors(model).items()):
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return f"m-{digest.hexdigest()[:12]}"


def save(model: ActionModel, directory: Path) -> WeightsInfo:
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(model.cfg.n_stages):
        save_file(_tensors(model.stage(k)), str(directory / stage_file(k)))
    save_file(_tensors(model.student), str(directory / STUDENT_FILE))
    info = WeightsInfo(config=model.cfg, version=model_version(model))
    manifest = {"version": info.version, "config": model.cfg.model_dump()}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return info


def read_info(directory: Path) -> WeightsInfo:
    manifest = json.loads((directory / MANIFEST).read_text())
    return WeightsInfo(config=ModelConfig(**manifest["config"]), version=manifest["version"])


def load_stage(directory: Path, index: int) -> tuple[Stage, WeightsInfo]:
    info = read_info(directory)
    stage = Stage(info.config, index)
    stage.load_state_dict(load_file(str(directory / stage_file(index))))
    return stage.eval(), info


def load_student(directory: Path) -> tuple[Student, WeightsInfo]:
    info = read_info(directory)
    student = Student(info.config)
    student.load_state_dict(load_file(str(directory / STUDENT_FILE)))
    return student.eval(), info


def load_model(directory: Path) -> tuple[ActionModel, WeightsInfo]:
    info = read_info(directory)
    model = ActionModel(info.config)
    for k in range(info.config.n_stages):
        model.stage(k).load_state_dict(load_file(str(directory / stage_file(k))))
    model.student.load_state_dict(load_file(str(directory / STUDENT_FILE)))
    return model.eval(), info
