"""The model family's shape, shared by shards, the coordinator and the in-process reference."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Sizes default to the seed article's ActionPlanner (d_model 256, 8 heads, 6 layers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observation_dim: int = Field(24, ge=1, description="Observation: proprioception + goal.")
    d_model: int = Field(256, ge=8)
    n_heads: int = Field(8, ge=1)
    n_layers: int = Field(6, ge=1)
    tokens: int = Field(32, ge=1, description="Tokens per step that the observation becomes.")
    memory_tokens: int = Field(4, ge=1, description="Recurrent state per stage, in tokens.")
    joints: int = Field(7, ge=1)
    horizon: int = Field(8, ge=1, description="Steps in one action chunk.")
    n_stages: int = Field(3, ge=1)
    student_hidden: int = Field(128, ge=8, description="GRU width of the distilled student.")
    seed: int = Field(0, description="Initialisation seed: the same seed gives the same weights.")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_stages > self.n_layers:
            raise ValueError(f"n_stages {self.n_stages} exceeds n_layers {self.n_layers}")
        return self

    def layer_range(self, stage: int) -> tuple[int, int]:
        """[start, end) of the layers stage `stage` holds; the split is as even as possible."""
        if not 0 <= stage < self.n_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.n_stages - 1}")
        base, extra = divmod(self.n_layers, self.n_stages)
        start = stage * base + min(stage, extra)
        return start, start + base + (1 if stage < extra else 0)

    def fingerprint(self) -> str:
        """A short stable hash of the config, part of a model version."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
