"""The model family's shape, shared by shards, the coordinator and the in-process reference."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


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
    stage_boundaries: tuple[int, ...] | None = Field(
        None,
        description="First layer of stages 1..n_stages-1 (e.g. (2, 5) for 6 layers in 3 stages: "
        "0-1, 2-4, 5); None splits as evenly as possible. `actionmesh plan` chooses them.",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_stages > self.n_layers:
            raise ValueError(f"n_stages {self.n_stages} exceeds n_layers {self.n_layers}")
        if self.stage_boundaries is not None:
            bounds = (0, *self.stage_boundaries, self.n_layers)
            if len(self.stage_boundaries) != self.n_stages - 1 or any(
                a >= b for a, b in itertools.pairwise(bounds)
            ):
                raise ValueError(
                    f"stage_boundaries {list(self.stage_boundaries)} must be {self.n_stages - 1} "
                    f"increasing layer indices in 1..{self.n_layers - 1} (every stage holds a layer)"
                )
        return self

    @model_serializer(mode="wrap")
    def _omit_even_split(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The even split is written as no field at all, so configs (and the model versions
        # hashed from them) from before explicit boundaries existed stay byte-identical.
        data: dict[str, Any] = handler(self)
        if data.get("stage_boundaries") is None:
            data.pop("stage_boundaries", None)
        return data

    def layer_range(self, stage: int) -> tuple[int, int]:
        """[start, end) of the layers stage `stage` holds: from stage_boundaries, else as even
        a split as possible."""
        if not 0 <= stage < self.n_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.n_stages - 1}")
        if self.stage_boundaries is not None:
            bounds = (0, *self.stage_boundaries, self.n_layers)
            return bounds[stage], bounds[stage + 1]
        base, extra = divmod(self.n_layers, self.n_stages)
        start = stage * base + min(stage, extra)
        return start, start + base + (1 if stage < extra else 0)

    @staticmethod
    def boundaries_setting(values: Sequence[int]) -> tuple[int, ...] | None:
        """A --stage-boundaries setting as this field: empty means the even split."""
        return tuple(values) or None

    def fingerprint(self) -> str:
        """A short stable hash of the config, part of a model version."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
