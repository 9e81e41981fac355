"""What each layer of a model costs: bytes of weights, FLOPs per step, and what a stage call
moves over the network. Counted from the real modules built on torch's meta device (no memory,
no compute), so the numbers follow the model code; `measure` times one layer here for real."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from service.model.config import ModelConfig
from service.model.layers import Block
from service.model.stage import Stage

FLOAT_BYTES = 4  # float32 weights and activations


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class LayerCosts:
    """Per layer: weight bytes and FLOPs per step (batch 1); per stage: what is not a layer
    (embedding, memory cell, readout, exit head), and the bytes a stage call carries."""

    layer_bytes: int
    layer_flops: float
    n_layers: int
    stage_fixed_bytes: tuple[int, ...]  # by stage index (stage 0 also embeds the observation)
    call_bytes: tuple[int, ...]  # activations and state in and out of each stage

    def stage_bytes(self, stage: int, layers: int) -> int:
        return self.stage_fixed_bytes[stage] + layers * self.layer_bytes


def layer_costs(cfg: ModelConfig) -> LayerCosts:
    with torch.device("meta"):
        block = Block(cfg.d_model, cfg.n_heads)
        # Stage 0 (it also embeds the observation) and, if any, one later stage.
        even = cfg.model_copy(update={"stage_boundaries": None})
        stages = [Stage(even, k) for k in range(min(2, cfg.n_stages))]
    block_params = _params(block)
    fixed = [_params(s) - len(s.blocks) * block_params for s in stages]
    positions = cfg.tokens + cfg.memory_tokens
    # Two FLOPs per weight per position, plus attention's scores and weighted sum.
    flops = 2.0 * block_params * positions + 4.0 * positions * positions * cfg.d_model
    activations = cfg.tokens * cfg.d_model * FLOAT_BYTES
    state = cfg.memory_tokens * cfg.d_model * FLOAT_BYTES
    first_in = cfg.observation_dim * FLOAT_BYTES
    calls = tuple(
        (first_in if k == 0 else activations) + activations + 2 * state for k in range(cfg.n_stages)
    )
    stage_fixed = tuple(fixed[min(k, len(fixed) - 1)] * FLOAT_BYTES for k in range(cfg.n_stages))
    return LayerCosts(
        layer_bytes=block_params * FLOAT_BYTES,
        layer_flops=flops,
        n_layers=cfg.n_layers,
        stage_fixed_bytes=stage_fixed,
        call_bytes=calls,
    )


def measure_layer_seconds(cfg: ModelConfig, repeats: int = 20) -> float:
    """Median time of one layer's forward here, batch 1, at the config's sizes (real weights,
    one layer only: every layer has the same shape)."""
    block = Block(cfg.d_model, cfg.n_heads).eval()
    x = torch.randn(1, cfg.tokens + cfg.memory_tokens, cfg.d_model)
    times = []
    with torch.no_grad():
        block(x)  # warm-up: first-call allocations
        for _ in range(repeats):
            start = time.perf_counter()
            block(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)
