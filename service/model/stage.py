"""One pipeline stage: a contiguous slice of layers with its own recurrent memory tokens."""

from __future__ import annotations

import torch
from torch import nn

from service.model.config import ModelConfig
from service.model.layers import (
    ActionHead,
    Block,
    MemoryCell,
    MemoryReadout,
    ObservationEmbedding,
    PooledGates,
)


class Stage(nn.Module):
    """Stage k of the model. Stateless as a module: memory comes in and goes out per call.

    The stage prepends its memory tokens to the activations and runs its layers over both;
    its memory positions then propose an update that a GRU-like gated cell merges into the old
    memory (so what the memory holds persists across steps unless the stage overwrites it),
    and a projection of the new memory is added to every output token (so that the head and
    the next stage read it directly, not only through attention). The cell also takes the
    stage's input directly, as a GRU would: stage 0 its raw observation (which it also embeds
    into tokens), a later stage the mean of the tokens it receives. So the stages' memories
    form a stack of recurrent layers, each reading the one below, and the transformer blocks
    add to each. Every stage has an action head: the last stage's is the model's output, the
    others' are early-exit heads.
    """

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        self.layer_start, self.layer_end = cfg.layer_range(index)
        self.embed = ObservationEmbedding(cfg) if index == 0 else None
        self.input_gates: nn.Module = (
            nn.Linear(cfg.observation_dim, 3 * cfg.d_model)
            if index == 0
            else PooledGates(cfg.d_model)
        )
        self.initial_memory = nn.Parameter(torch.randn(cfg.memory_tokens, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads) for _ in range(self.layer_end - self.layer_start)
        )
        self.memory_cell = MemoryCell(cfg.d_model)
        self.readout = MemoryReadout(cfg.memory_tokens, cfg.d_model)
        self.head = ActionHead(cfg)

    @property
    def is_last(self) -> bool:
        return self.index == self.cfg.n_stages - 1

    def fresh_memory(self, batch: int) -> torch.Tensor:
        return self.initial_memory.detach().unsqueeze(0).expand(batch, -1, -1).clone()

    def _enter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's input as tokens, and as the memory cell's direct gate input."""
        direct: torch.Tensor = self.input_gates(x).unsqueeze(1)
        tokens = self.embed(x) if self.embed is not None else x
        return tokens, direct

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, observation_dim] for stage 0 else [B, tokens, d_model]; memory: [B, M, d_model]."""
        tokens, direct = self._enter(x)
        m = memory.shape[1]
        h = torch.cat([memory, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        new_memory = self.memory_cell(h[:, :m], memory, direct)
        return self.readout(h[:, m:], new_memory), new_memory

    def forward_without_blocks(
        self, x: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` as it computes while the blocks and the proposal's weights are as
        initialised (zero residual branches, zero proposal weights), at a fraction of the cost:
        the recurrent path that training's memory phase learns first."""
        tokens, direct = self._enter(x)
        new_memory = self.memory_cell(None, memory, direct)
        return self.readout(tokens, new_memory), new_memory

    def action(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # type: ignore[no-any-return]
