"""The distilled student: a small recurrent model that runs inside the coordinator as fallback."""

from __future__ import annotations

import torch
from torch import nn

from service.model.config import ModelConfig


class Student(nn.Module):
    """A GRU over observations with a linear action head; its state is [B, student_hidden]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.horizon, self.joints = cfg.horizon, cfg.joints
        self.hidden_size = cfg.student_hidden
        self.cell = nn.GRUCell(cfg.observation_dim, cfg.student_hidden)
        self.out = nn.Linear(cfg.student_hidden, cfg.horizon * cfg.joints)

    def fresh_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_size)

    def forward(self, obs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_state: torch.Tensor = self.cell(obs, state)
        action = torch.tanh(self.out(new_state)).view(-1, self.horizon, self.joints)
        return action, new_state
