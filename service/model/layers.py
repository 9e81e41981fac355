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
    """A pre-norm transformer block whose residual branches start at zero: a fresh block passes
    its input through unchanged, so that a stage first trained without its blocks (training's
    memory phase) computes the same with them, and the blocks then learn what to add."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        mlp_out = nn.Linear(4 * d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), mlp_out)
        for branch_out in (self.proj, mlp_out):
            nn.init.zeros_(branch_out.weight)
            nn.init.zeros_(branch_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class MemoryCell(nn.Module):
    """A GRU update of each memory token: the stage's memory positions propose, the gate decides.

    Written out with Linear layers (not nn.GRUCell) for the same reason as Block. The update
    gate's bias starts negative, so that a fresh model keeps most of its memory from step to
    step: information persists across steps unless the stage learns to overwrite it. The
    proposal's weights start at zero: each stage starts as a plain GRU over its direct input
    (see Stage), and the memory positions' proposals come in as training finds them useful (fed
    in at full strength from the start, they drowned the observation and no memory was learned).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.from_input = nn.Linear(d_model, 3 * d_model)
        self.from_memory = nn.Linear(d_model, 3 * d_model)
        with torch.no_grad():
            self.from_input.weight.zero_()
            self.from_input.bias[d_model : 2 * d_model].fill_(-1.0)

    def forward(
        self,
        proposal: torch.Tensor | None,
        memory: torch.Tensor,
        direct: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """proposal, memory: [B, M, d_model] -> new memory [B, M, d_model]. `direct`
        ([B, 1, 3 * d_model]) is added to the gates' inputs: a stage feeds its input (stage 0 the
        raw observation) in this way, as a GRU would. Either input may be None (training's
        memory phase has no proposal), not both."""
        if proposal is not None:
            gates = self.from_input(self.norm(proposal))
            if direct is not None:
                gates = gates + direct
        elif direct is not None:
            gates = direct + self.from_input.bias
        else:
            raise ValueError("a memory update needs a proposal or a direct input")
        xr, xz, xn = gates.chunk(3, dim=-1)
        hr, hz, hn = self.from_memory(memory).chunk(3, dim=-1)
        reset = torch.sigmoid(xr + hr)
        write = torch.sigmoid(xz + hz)
        candidate = torch.tanh(xn + reset * hn)
        new: torch.Tensor = memory + write * (candidate - memory)
        return new


class PooledGates(nn.Module):
    """A later stage's direct input to its memory cell: the mean of the tokens it receives,
    normalised, as gate inputs [B, 3 * d_model]. The previous stage's memory read-out is added
    to every one of those tokens, so this is how a stage's memory reads the one below it: the
    stages' memories form a stack, each integrating over time what the one below extracts."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, 3 * d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gates: torch.Tensor = self.proj(self.norm(tokens.mean(dim=1)))
        return gates


class MemoryReadout(nn.Module):
    """Projects all of a stage's memory tokens into one vector added to every output token, so
    that the head (which pools the output tokens) and the next stage see the memory directly."""

    def __init__(self, memory_tokens: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(memory_tokens * d_model, d_model)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        read: torch.Tensor = self.proj(memory.flatten(1)).unsqueeze(1)
        return tokens + read


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
