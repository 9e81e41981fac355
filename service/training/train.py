"""Training the model family on the reach task, in three phases, deterministically.

(a) The stage-sharded model imitates the expert: truncated backpropagation through time over
episode windows, the stages' memories carried (detached) from window to window, teacher-forced
on states that the expert (with perturbed commands) or the model itself visits. (b) With the
trunk frozen, every stage's head learns the expert's chunk from that stage's activations: the
non-last stages' exit heads, and the last stage's head once more, to convergence. (c) The
student GRU learns the full model's chunks (distillation). (b) and (c) learn on states that
the trained model visits, where they will have to stand in for it.

Same seed and settings give byte-identical weights: one torch thread, seeded initialisation,
episodes drawn from seeds derived from (seed, index), and a fixed order of everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.config import TrainSettings
from service.model.action_model import ActionModel
from service.model.layers import ActionHead
from service.training.modes import FullPolicy
from service.training.task import TaskConfig, derive_seed, make_episodes, rollout

STUDENT_BATCH_EPISODES = 32  # whole episodes per student update: a GRU step costs next to nothing


def train(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """All three phases, in place on `model`, which is left in eval mode. Sets torch to one
    thread: with more, reductions may split differently and the weights differ in the last bits."""
    torch.set_num_threads(1)
    imitate(model, task, settings)
    data = record(model, task, settings)
    fit_heads(model, data, settings)
    distill_student(model, data, settings)
    model.eval()


def forward(
    model: ActionModel, obs: torch.Tensor, states: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ActionModel.step with gradients."""
    x, new_states = obs, []
    for k in range(model.cfg.n_stages):
        x, memory = model.stage(k)(x, states[k])
        new_states.append(memory)
    return model.stage(model.cfg.n_stages - 1).action(x), new_states


def _warmup_cosine(step: int, total: int) -> float:
    """Linear warm-up over the first 10% of updates, then cosine decay to zero."""
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def imitate(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """Phase (a): the stages and the last stage's head learn the expert's chunks.

    Every other batch the model drives the arm itself (DAgger-lite): the expert's labels then
    also cover the states the model's own errors lead to, which expert-driven data never shows.
    """
    last = model.cfg.n_stages - 1
    params = [
        p
        for k in range(model.cfg.n_stages)
        for name, p in model.stage(k).named_parameters()
        if k == last or not name.startswith("head.")
    ]
    windows = math.ceil(task.steps / settings.bptt_steps)
    total = settings.iterations * windows
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _warmup_cosine(step, total))
    model.train()
    bar = tqdm(range(settings.iterations), desc="imitate expert", unit="batch", leave=False)
    for i in bar:
        episodes = make_episodes(
            task, settings.batch_episodes, derive_seed("train", settings.seed, i)
        )
        driver = FullPolicy(model) if i % 2 else None
        demo = rollout(task, episodes, driver, settings.action_noise)
        states = model.fresh_states(episodes.size)
        for start in range(0, task.steps, settings.bptt_steps):
            end = min(start + settings.bptt_steps, task.steps)
            loss = torch.zeros(())
            for t in range(start, end):
                action, states = forward(model, demo.observations[:, t], states)
                loss = loss + F.mse_loss(action, demo.expert_chunks[:, t])
            loss = loss / (end - start)
            opt.zero_grad()
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            states = [s.detach() for s in states]
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()


@dataclass(frozen=True)
class Recording:
    """States the trained model visits: [N, T, ...] observations, labels and head inputs."""

    observations: torch.Tensor
    expert_chunks: torch.Tensor
    features: list[torch.Tensor]  # per stage: [N, T, d_model], its head's pooled, normalised input


class _RecordingPolicy(FullPolicy):
    """FULL, also keeping what each stage's head pools: its normalised tokens' mean."""

    def __init__(self, model: ActionModel) -> None:
        super().__init__(model)
        self.features: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_stages)]

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        x, states = obs, []
        for k in range(self.model.cfg.n_stages):
            stage = self.model.stage(k)
            x, memory = stage(x, self.states[k])
            states.append(memory)
            self.features[k].append(stage.head.norm(x).mean(dim=1))
        self.states = states
        return self.model.stage(self.model.cfg.n_stages - 1).action(x)


def record(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> Recording:
    episodes = make_episodes(
        task, settings.distill_episodes, derive_seed("distill", settings.seed, 0)
    )
    policy = _RecordingPolicy(model)
    driven = rollout(task, episodes, policy, settings.action_noise)
    return Recording(
        observations=driven.observations,
        expert_chunks=driven.expert_chunks,
        features=[torch.stack(f, dim=1) for f in policy.features],
    )


def _head_output(head: ActionHead, features: torch.Tensor) -> torch.Tensor:
    """ActionHead.forward from its pooled, normalised input: [..., horizon, joints]."""
    out: torch.Tensor = torch.tanh(head.out(features))
    return out.view(*out.shape[:-1], head.horizon, head.joints)


def fit_heads(model: ActionModel, data: Recording, settings: TrainSettings) -> None:
    """Phase (b): each head's output layer, on features computed once (trunk frozen; the head's
    LayerNorm stays as it is, so its pooled output does not change while we fit)."""
    for k, features in enumerate(data.features):
        head = model.stage(k).head
        opt = torch.optim.Adam(head.out.parameters(), lr=settings.head_learning_rate)
        for _ in tqdm(range(settings.head_iterations), desc=f"stage {k} head", leave=False):
            loss = F.mse_loss(_head_output(head, features), data.expert_chunks)
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()


def distill_student(model: ActionModel, data: Recording, settings: TrainSettings) -> None:
    """Phase (c): the student imitates the full model over whole episodes."""
    last = model.stage(model.cfg.n_stages - 1).head
    with torch.no_grad():
        teacher = _head_output(last, data.features[-1])
    student = model.student
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=settings.student_learning_rate)
    n, steps = data.observations.shape[:2]
    gen = torch.Generator().manual_seed(derive_seed("student", settings.seed, 0))
    bar = tqdm(range(settings.student_iterations), desc="distil student", leave=False)
    for _ in bar:
        batch = torch.randperm(n, generator=gen)[:STUDENT_BATCH_EPISODES]
        state = student.fresh_state(len(batch))
        loss = torch.zeros(())
        for t in range(steps):
            action, state = student(data.observations[batch, t], state)
            loss = loss + F.mse_loss(action, teacher[batch, t])
        opt.zero_grad()
        torch.autograd.backward(loss / steps)
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    student.eval()
