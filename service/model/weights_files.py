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
