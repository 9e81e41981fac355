"""The serve modes as in-process policies, so the quality table measures what a robot would get.

FULL runs every stage with its recurrent memory; EARLY_EXIT at stage k runs stages 0..k (their
memories go on as in FULL) and answers from stage k's exit head; FALLBACK is the student with
its own state; STATE_LOST is FULL with every stage's memory fresh at every step, what a session
would get if its state were lost on each tick.
"""

from __future__ import annotations

import torch

from service.model.action_model import ActionModel
from service.model.student import Student


class FullPolicy:
    def __init__(self, model: ActionModel) -> None:
        self.model = model
        self.states: list[torch.Tensor] = []

    def reset(self, batch: int) -> None:
        self.states = self.model.fresh_states(batch)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        action, self.states = self.model.step(obs, self.states)
        return action


class EarlyExitPolicy:
    def __init__(self, model: ActionModel, stage: int) -> None:
        if not 0 <= stage < model.cfg.n_stages - 1:
            raise ValueError(f"early exit needs a non-last stage, not {stage}")
        self.model, self.stage = model, stage
        self.states: list[torch.Tensor] = []

    def reset(self, batch: int) -> None:
        self.states = self.model.fresh_states(batch)[: self.stage + 1]

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        for k in range(self.stage + 1):
            x, self.states[k] = self.model.stage(k)(x, self.states[k])
        return self.model.stage(self.stage).action(x)


class StudentPolicy:
    """A GRU with its own state: FALLBACK (the model's student), or the GRU baseline."""

    def __init__(self, student: Student) -> None:
        self.student = student
        self.state = torch.empty(0)

    def reset(self, batch: int) -> None:
        self.state = self.student.fresh_state(batch)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        out: tuple[torch.Tensor, torch.Tensor] = self.student(obs, self.state)
        action, self.state = out
        return action


class StateLostPolicy:
    def __init__(self, model: ActionModel) -> None:
        self.model = model

    def reset(self, batch: int) -> None:
        """Nothing to keep: every step starts from fresh memory."""

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        action, _ = self.model.step(obs, self.model.fresh_states(obs.shape[0]))
        return action
