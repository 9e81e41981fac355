"""The tiny training run the training tests share (the `tiny` fixture in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from service.cli.train import model_config
from service.model import weights
from service.model.action_model import ActionModel
from service.runtime.command_settings import TrainSettings
from service.training.baseline import train_baseline
from service.training.task import TaskConfig
from service.training.trainer import train

TASK = TaskConfig()
TINY = {
    "d_model": 32,
    "n_heads": 2,
    "n_layers": 3,
    "tokens": 4,
    "memory_tokens": 2,
    "student_hidden": 16,
    "memory_iterations": 8,
    "memory_batch_episodes": 4,
    "baseline_hidden": 16,
    "iterations": 2,
    "batch_episodes": 4,
    "distill_episodes": 8,
    "head_iterations": 20,
    "student_iterations": 10,
    "eval_episodes": 8,
}


def trained(directory: Path) -> tuple[ActionModel, str]:
    settings = TrainSettings.model_validate(TINY)
    model = ActionModel(model_config(settings))
    train(model, TASK, settings, train_baseline(model.cfg, TASK, settings))  # as the CLI does
    return model, weights.save(model, directory).version
