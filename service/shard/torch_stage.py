"""The torch runtime of a shard: the `Stage` module itself, behind the numpy interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.stage import Stage
from service.shard.stage_runtime import Array, StageOutputs, is_last


class TorchStage:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage.eval()
        self._fresh = stage.fresh_memory(1)[0].numpy()

    @property
    def cfg(self) -> ModelConfig:
        return self.stage.cfg

    @property
    def index(self) -> int:
        return self.stage.index

    def fresh_memory(self) -> Array:
        return self._fresh

    def run(self, inputs: Array, memory: Array, want_action: bool) -> StageOutputs:
        with torch.no_grad():
            out, new_memory = self.stage(torch.from_numpy(inputs), torch.from_numpy(memory))
            wanted = want_action or is_last(self.cfg, self.index)
            action = self.stage.action(out).numpy() if wanted else None
        return StageOutputs(np.asarray(out.numpy()), np.asarray(new_memory.numpy()), action)


def set_threads(threads: int) -> None:
    """Several shards on one node share its cores: each takes `threads`, no more. Once per
    process, before any computation (torch refuses to change interop threads after)."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def load(directory: Path, index: int) -> TorchStage:
    stage, _ = weights.load_stage(directory, index)
    return TorchStage(stage)


def initialised(
    n_stages: int, seed: int, index: int, stage_boundaries: list[int]
) -> tuple[TorchStage, str]:
    """Stage `index` of a model initialised from `seed` (no weights given), and its version.
    ValueError (one line) for a model that cannot be built."""
    try:
        cfg = ModelConfig(
            n_stages=n_stages,
            seed=seed,
            stage_boundaries=ModelConfig.boundaries_setting(stage_boundaries),
        )
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"invalid model: {problems}") from None
    model = ActionModel(cfg)
    if not 0 <= index < n_stages:
        raise ValueError(f"stage {index} out of range: the model has {n_stages} stages")
    return TorchStage(model.stage(index)), weights.model_version(model)
