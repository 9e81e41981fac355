"""Weights on disk as safetensors (one file per stage, one for the student) + model.json
(whose reading, torch-free, is in weights_files.py).

Never pickle. The model version is derived from the config and the tensors' bytes, so the
same seed and config give the same version on every node whose CPU runs the same kernels
(the random draws of initialisation are rounded by them: `ATEN_CPU_CAPABILITY=default`
gives another version than avx2); a checkpoint's files give the same version everywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from service.model.action_model import ActionModel
from service.model.stage import Stage
from service.model.student import Student
from service.model.weights_files import (
    MANIFEST,
    QUALITY_FILE,
    STUDENT_FILE,
    WeightsInfo,
    read_info,
    stage_file,
)

__all__ = [  # the file names and read_info live in weights_files (no torch); kept here too
    "MANIFEST",
    "QUALITY_FILE",
    "STUDENT_FILE",
    "WeightsInfo",
    "load_model",
    "load_stage",
    "load_student",
    "model_version",
    "read_info",
    "save",
    "stage_file",
]


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
