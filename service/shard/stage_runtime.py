"""What a shard runs one stage with, as the servicer sees it: numpy arrays in and out, so that
the servicer (and the shard process) never needs torch. Two runtimes implement it: torch over
the `Stage` module (torch_stage.py), ONNX Runtime over the exported graph (onnx_stage.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from service.model.config import ModelConfig

Array = npt.NDArray[np.float32]

# --runtime of a shard: torch, ONNX Runtime on the float32 graph, or on the int8 one.
RuntimeName = Literal["torch", "onnx", "onnx-int8"]


@dataclass(frozen=True)
class StageOutputs:
    hidden: Array  # [B, tokens, d_model]: the next stage's input
    memory: Array  # [B, memory_tokens, d_model]: the stage's new recurrent state
    action: Array | None  # [B, horizon, joints]: the stage's exit (or final) action, if asked


class StageRuntime(Protocol):
    """One stage of one model version, ready to run a batch."""

    @property
    def cfg(self) -> ModelConfig: ...

    @property
    def index(self) -> int: ...

    def fresh_memory(self) -> Array:
        """[memory_tokens, d_model]: the state of a session this stage has not seen yet."""
        ...

    def run(self, inputs: Array, memory: Array, want_action: bool) -> StageOutputs:
        """inputs: [B, observation_dim] at stage 0, else [B, tokens, d_model]; memory:
        [B, memory_tokens, d_model]. The action is computed when asked or at the last stage."""
        ...


def input_shape(cfg: ModelConfig, index: int) -> list[int]:
    """One item's input at stage `index`: the observation at stage 0, else activations."""
    return [cfg.observation_dim] if index == 0 else [cfg.tokens, cfg.d_model]


def is_last(cfg: ModelConfig, index: int) -> bool:
    return index == cfg.n_stages - 1
