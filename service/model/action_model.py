"""The whole model in one process: the reference the cluster must match, step by step."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from service.model.config import ModelConfig
from service.model.stage import Stage
from service.model.student import Student


class ActionModel(nn.Module):
    """All K stages plus the student, built deterministically from cfg.seed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.stages = nn.ModuleList(Stage(cfg, k) for k in range(cfg.n_stages))
            self.student = Student(cfg)
        self.eval()

    def stage(self, index: int) -> Stage:
        return cast(Stage, self.stages[index])

    def fresh_states(self, batch: int) -> list[torch.Tensor]:
        return [self.stage(k).fresh_memory(batch) for k in range(self.cfg.n_stages)]

    def forward(
        self, obs: torch.Tensor, states: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One control tick for a batch, differentiable (training); `step` serves."""
        x, new_states = obs, []
        for k in range(self.cfg.n_stages):
            x, memory = self.stage(k)(x, states[k])
            new_states.append(memory)
        return self.stage(self.cfg.n_stages - 1).action(x), new_states

    @torch.no_grad()
    def step(
        self, obs: torch.Tensor, states: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One control tick for a batch: obs [B, observation_dim] -> action [B, H, joints]."""
        return self.forward(obs, states)
