"""What a weights directory holds, readable without torch: its file names and `model.json`.

`weights.py` writes and loads the tensors (and imports torch); commands that only need a
directory's version and config (`actionmesh ckpt`) read them from here and start fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from service.model.config import ModelConfig

MANIFEST = "model.json"
STUDENT_FILE = "student.safetensors"
QUALITY_FILE = "quality.json"  # the offline quality table of `actionmesh train`, when trained


def stage_file(stage: int) -> str:
    return f"stage-{stage}.safetensors"


@dataclass(frozen=True)
class WeightsInfo:
    config: ModelConfig
    version: str


def read_info(directory: Path) -> WeightsInfo:
    manifest = json.loads((directory / MANIFEST).read_text())
    return WeightsInfo(config=ModelConfig(**manifest["config"]), version=manifest["version"])


# Exported copies of the same weights (`actionmesh export`), kept beside the safetensors files
# so that a checkpoint version carries them with their sha256 like every other file.
STUDENT_ONNX_FILE = "student.onnx"
STUDENT_TORCHSCRIPT_FILE = "student.torchscript.pt"


def onnx_stage_file(stage: int, *, int8: bool = False) -> str:
    """stage-K.onnx (float32), or stage-K.int8.onnx (linear layers quantized to int8)."""
    return f"stage-{stage}.int8.onnx" if int8 else f"stage-{stage}.onnx"


def torchscript_stage_file(stage: int) -> str:
    return f"stage-{stage}.torchscript.pt"


# What an exported graph records and exposes (service/model/export.py writes, the ONNX shard
# runtime checks): the model version and part (stage index, or "student") it came from, and
# its input and output names.
META_VERSION = "actionmesh_model_version"
META_PART = "actionmesh_part"
STAGE_INPUTS = ("input", "memory")
STAGE_OUTPUTS = ("hidden", "new_memory", "action")
