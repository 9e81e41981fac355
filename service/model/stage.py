"""One pipeline stage: a contiguous slice of layers with its own recurrent memory tokens."""

from __future__ import annotations

import torch
from torch import nn

from service.model.config import ModelConfig
from service.model.layers import ActionHead, Block, MemoryCell, MemoryReadout, ObservationEmbedding


class Stage(nn.Module):
    """Stage k of the model. Stateless as a module: memory comes in and goes out per call.

    The stage prepends its memory tokens to the activations and runs its layers over both;
    its memory positions then propose an update that a GRU-like gated cell merges into the old
    memory (so what the memory holds persists across steps unless the stage overwrites it),
    and a projection of the new memory is added to every output token (so that the head and
    the next stage read it directly, not only through attention). Stage 0 also embeds the raw
    observation and feeds it straight into its memory cell, as a GRU would. Every stage has an
    action head: the last stage's is the model's output, the others' are early-exit heads.
    """

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        self.layer_start, self.layer_end = cfg.layer_range(index)
        self.embed = ObservationEmbedding(cfg) if index == 0 else None
        self.observe_memory = (
            nn.Linear(cfg.observation_dim, 3 * cfg.d_model) if index == 0 else None
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

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, observation_dim] for stage 0 else [B, tokens, d_model]; memory: [B, M, d_model]."""
        direct = None
        if self.embed is not None and self.observe_memory is not None:
            direct = self.observe_memory(x).unsqueeze(1)
            x = self.embed(x)
        m = memory.shape[1]
        h = torch.cat([memory, x], dim=1)
        for block in self.blocks:
            h = block(h)
        new_memory = self.memory_cell(h[:, :m], memory, direct)
        return self.readout(h[:, m:], new_memory), new_memory

    def action(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # type: ignore[no-any-return]
