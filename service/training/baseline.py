"""The yardstick: a GRU trained directly on the expert, with the recipe, episodes and budget
of the model's memory phase, so that the quality table can say whether the stage-sharded
model is worth its cost against the plain recurrent policy it competes with."""

from __future__ import annotations

import torch

from service.model.config import ModelConfig
from service.model.student import Student
from service.runtime.command_settings import TrainSettings
from service.training.task import TaskConfig, derive_seed
from service.training.trainer import Imitation, States, imitate_expert


def train_baseline(cfg: ModelConfig, task: TaskConfig, settings: TrainSettings) -> Student:
    """A GRU of `baseline_hidden` units (the student's architecture), in eval mode. One torch
    thread, as `train` uses: the same bytes from the same seed, and no threads spinning against
    each other on a busy machine (with the default threads it ran some 6x slower under load)."""
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("baseline", settings.seed, 0))
        gru = Student(cfg.model_copy(update={"student_hidden": settings.baseline_hidden}))

    def step(obs: torch.Tensor, states: States) -> tuple[list[torch.Tensor], States]:
        action, state = gru(obs, states[0])
        return [action], [state]

    gru.train()
    run = Imitation(
        name="GRU baseline",
        step=step,
        fresh=lambda batch: [gru.fresh_state(batch)],
        params=list(gru.parameters()),
        updates=settings.memory_iterations,
        batch_episodes=settings.memory_batch_episodes,
        learning_rate=settings.baseline_learning_rate,
        input_weights=[gru.cell.weight_ih],  # what reads the observation, as in the model
    )
    imitate_expert(run, task, settings)
    return gru.eval()
