"""Training the model family on the reach task, in four phases, deterministically.

(0) Stage 0's memory path (observation -> memory cell -> read-out -> head, without the
transformer blocks) learns the expert's chunks like a GRU: cheap, and what teaches the model
to keep track of the target. (a) The stage-sharded model imitates the expert: truncated
backpropagation through time over episode windows, the stages' memories carried (detached)
from window to window, teacher-forced on states that the expert (with perturbed commands) or
the model itself visits. (b) With the
trunk frozen, every stage's head learns the expert's chunk from that stage's activations: the
non-last stages' exit heads, and the last stage's head once more, to convergence. (c) The
student GRU learns the full model's chunks (distillation). (b) and (c) learn on states that
the trained model visits, where they will have to stand in for it.

Same seed and settings give byte-identical weights: one torch thread, seeded initialisation,
episodes drawn from seeds derived from (seed, index), and a fixed order of everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.model.action_model import ActionModel
from service.model.layers import ActionHead
from service.runtime.settings import TrainSettings
from service.training.modes import FullPolicy
from service.training.task import TaskConfig, derive_seed, make_episodes, rollout

STUDENT_BATCH_EPISODES = 32  # whole episodes per student update: a GRU step costs next to nothing
# Phase (0): updates of stage 0's memory path per phase-(a) iteration, their batch and peak
# learning rate. At the default size phase (0) is a large share of the training time.
MEMORY_UPDATES_PER_ITERATION = 25
MEMORY_BATCH_EPISODES = 32
MEMORY_LEARNING_RATE = 1e-2


def train(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """All four phases, in place on `model`, which is left in eval mode. Sets torch to one
    thread: with more, reductions may split differently and the weights differ in the last bits."""
    torch.set_num_threads(1)
    warm_memory(model, task, settings)
    imitate(model, task, settings)
    data = record(model, task, settings)
    fit_heads(model, data, settings)
    distill_student(model, data, settings)
    model.eval()


def trainable_fresh_states(model: ActionModel, batch: int) -> list[torch.Tensor]:
    """model.fresh_states, but attached to each stage's initial_memory, so that it learns too
    (Stage.fresh_memory hands out a detached copy: what serving wants)."""
    return [
        model.stage(k).initial_memory.unsqueeze(0).expand(batch, -1, -1)
        for k in range(model.cfg.n_stages)
    ]


def _warmup_cosine(step: int, total: int) -> float:
    """Linear warm-up over the first 10% of updates, then cosine decay to zero."""
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _memory_path(model: ActionModel, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stage 0's memory read by stage 0's head without the blocks: memory -> action chunk."""
    stage, no_tokens = model.stage(0), torch.zeros(batch, 1, model.cfg.d_model)
    return lambda memory: stage.action(stage.readout(no_tokens, memory))


def warm_memory(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """Phase (0): stage 0's memory path alone learns the expert's chunks, as a GRU would.

    Stage 0's memory cell sees the raw observation; here its new memory goes through the
    read-out straight to stage 0's head, without the transformer blocks (their proposal into
    the memory is zero-initialised). Without the blocks an update costs a fraction of a
    phase-(a) one, so it can afford the many updates a recurrent model needs to learn what the
    full model, in a few hundred expensive updates, never found on its own: to keep track of
    where the target is. Phase (a) then starts from a memory worth reading.
    """
    stage = model.stage(0)
    if stage.observe_memory is None:
        return
    modules = [stage.observe_memory, stage.memory_cell, stage.readout, stage.head]
    params = [stage.initial_memory] + [p for m in modules for p in m.parameters()]
    total = settings.iterations * MEMORY_UPDATES_PER_ITERATION
    opt = torch.optim.Adam(params, lr=MEMORY_LEARNING_RATE)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _warmup_cosine(step, total))
    model.train()
    for i in tqdm(range(total), desc="warm memory", unit="batch", leave=False):
        episodes = make_episodes(
            task, MEMORY_BATCH_EPISODES, derive_seed("memory", settings.seed, i)
        )
        demo = rollout(task, episodes, None, settings.action_noise)
        memory = trainable_fresh_states(model, episodes.size)[0]
        memory_path = _memory_path(model, episodes.size)
        loss = torch.zeros(())
        for t in range(task.steps):
            direct = stage.observe_memory(demo.observations[:, t]).unsqueeze(1)
            memory = stage.memory_cell(None, memory, direct)
            loss = loss + F.mse_loss(memory_path(memory), demo.expert_chunks[:, t])
        opt.zero_grad()
        torch.autograd.backward(loss / task.steps)
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    model.eval()


def imitate(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """Phase (a): the stages and the last stage's head learn the expert's chunks.

    Every other batch the model drives the arm itself (DAgger-lite): the expert's labels then
    also cover the states the model's own errors lead to, which expert-driven data never shows.
    Stage 0's memory path keeps its phase-(0) loss alongside (through stage 0's head, which
    phase (b) refits from the stage's tokens anyway), so that the joint training, too short to
    learn memory by itself, does not wash out what phase (0) put there.
    """
    last = model.cfg.n_stages - 1
    warm = model.stage(0).observe_memory is not None
    params = [
        p
        for k in range(model.cfg.n_stages)
        for name, p in model.stage(k).named_parameters()
        if k == last or not name.startswith("head.") or (k == 0 and warm)
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
        states = trainable_fresh_states(model, episodes.size)
        memory_path = _memory_path(model, episodes.size) if warm else None
        for start in range(0, task.steps, settings.bptt_steps):
            end = min(start + settings.bptt_steps, task.steps)
            loss = torch.zeros(())
            for t in range(start, end):
                action, states = model.forward(demo.observations[:, t], states)
                loss = loss + F.mse_loss(action, demo.expert_chunks[:, t])
                if memory_path is not None:
                    loss = loss + F.mse_loss(memory_path(states[0]), demo.expert_chunks[:, t])
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
