"""Building blocks: a pre-norm transformer block, the observation embedding, an action head.

Written out (rather than nn.TransformerEncoderLayer) so that batched and unbatched runs take
the same kernels, which keeps cluster and in-process results equal to tight tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from service.model.config import ModelConfig


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class ObservationEmbedding(nn.Module):
    """Turns one observation vector into `tokens` tokens of width d_model."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tokens, self.d_model = cfg.tokens, cfg.d_model
        self.proj = nn.Linear(cfg.observation_dim, cfg.tokens * cfg.d_model)
        self.position = nn.Parameter(torch.randn(cfg.tokens, cfg.d_model) * 0.02)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = self.proj(obs).view(-1, self.tokens, self.d_model)
        return tokens + self.position


class ActionHead(nn.Module):
    """Pools a stage's activations into an action chunk [horizon, joints] in [-1, 1]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.horizon, self.joints = cfg.horizon, cfg.joints
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.horizon * cfg.joints)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(hidden).mean(dim=1)
        return torch.tanh(self.out(pooled)).view(-1, self.horizon, self.joints)
