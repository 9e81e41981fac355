"""Training the model family on the reach task, in four phases, deterministically.

(0) The stages' memory path (every stage without its transformer blocks, which start as the
identity: see Block) learns the expert's chunks through every stage's head, the last one's
weighted most: a stack of recurrent layers, cheap enough to take the many updates recurrence
needs. (a) The whole model,
blocks included, imitates the expert from there: truncated backpropagation through time over
episode windows, the stages' memories carried (detached) from window to window. (b) With the
trunk frozen, every exit head (each non-last stage's) learns the expert's chunk from that
stage's activations. (c) The
student GRU, started from the GRU baseline when it has the student's size, learns the full
model's chunks (distillation). (b) and (c) learn on states that
the trained model visits, where they will have to stand in for it. Phases (0) and (a) alternate
expert-driven batches (commands perturbed) with batches the model drives itself (DAgger): the
expert's labels then also cover the states the model's own errors lead to.

Same seed and settings give byte-identical weights: one torch thread, seeded initialisation,
episodes drawn from seeds derived from (seed, index), and a fixed order of everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.model.action_model import ActionModel
from service.model.layers import ActionHead
from service.model.student import Student
from service.runtime.command_settings import TrainSettings
from service.training.modes import FullPolicy
from service.training.task import TaskConfig, derive_seed, make_episodes, rollout

STUDENT_BATCH_EPISODES = 32  # whole episodes per student update: a GRU step costs next to nothing
# Learning-rate factor of the weights that read the raw observation (Imitation.input_weights).
# To latch a sighting and hold it between sightings, a gate needs input weights of several
# units on the visible flag; Adam moves a weight about one learning rate per update, so at the
# shared rate a few hundred updates never got there (quick size: FULL 53% success, 20x: 92%).
INPUT_LEARNING_RATE_FACTOR = 20.0

States = list[torch.Tensor]
# One recurrent step: observations and states in, one action chunk per head (the policy's own,
# the last, after any exit heads trained beside it) and the new states out.
StepFn = Callable[[torch.Tensor, States], tuple[list[torch.Tensor], States]]


def train(
    model: ActionModel, task: TaskConfig, settings: TrainSettings, baseline: Student | None = None
) -> None:
    """All four phases, in place on `model`, which is left in eval mode. The student starts
    from `baseline` (the GRU trained directly on the expert) when it has the student's size.
    Sets torch to one thread: with more, reductions may split differently and the weights
    differ in the last bits."""
    torch.set_num_threads(1)
    learn_memory(model, task, settings)
    imitate(model, task, settings)
    data = record(model, task, settings)
    fit_heads(model, data, settings)
    if baseline is not None and baseline.hidden_size == model.student.hidden_size:
        model.student.load_state_dict(baseline.state_dict())
    distill_student(model, data, settings)
    model.eval()


def trainable_fresh_states(model: ActionModel, batch: int) -> States:
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


class RecurrentPolicy:
    """Any recurrent step function as a rollout's driver (no gradients)."""

    def __init__(self, step: StepFn, fresh: Callable[[int], States]) -> None:
        self.step, self.fresh = step, fresh
        self.states: States = []

    def reset(self, batch: int) -> None:
        self.states = self.fresh(batch)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        actions, self.states = self.step(obs, self.states)
        return actions[-1]


@dataclass(frozen=True)
class Imitation:
    """One recurrent imitation run: what learns, on what, for how long."""

    name: str  # progress bar label
    step: StepFn
    fresh: Callable[[int], States]  # states that the optimiser reaches (initial memory learns)
    params: Sequence[nn.Parameter]
    updates: int
    batch_episodes: int
    learning_rate: float
    head_weights: Sequence[float] = (1.0,)  # loss weight of each head the step answers with
    input_weights: Sequence[torch.Tensor] = ()  # of `params`: learn INPUT_LEARNING_RATE_FACTOR x


def imitate_expert(run: Imitation, task: TaskConfig, settings: TrainSettings) -> None:
    """Whole-episode backpropagation through time on the expert's chunks, driven in turn by the
    expert (perturbed commands) and by the learner itself. Used for the model's memory phase
    and for the GRU baseline: the same recipe, episodes and budget for both."""
    inputs = {id(p) for p in run.input_weights}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in run.params if id(p) not in inputs]},
        {"params": run.input_weights, "lr": run.learning_rate * INPUT_LEARNING_RATE_FACTOR},
    ]
    opt = torch.optim.Adam(groups, lr=run.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _warmup_cosine(i, run.updates))

    def detached(batch: int) -> States:
        return [s.detach() for s in run.fresh(batch)]

    driver = RecurrentPolicy(run.step, detached)
    bar = tqdm(range(run.updates), desc=run.name, unit="batch", leave=False)
    for i in bar:
        episodes = make_episodes(
            task, run.batch_episodes, derive_seed("imitation", settings.seed, i)
        )
        demo = rollout(task, episodes, driver if i % 2 else None, settings.action_noise)
        states = run.fresh(episodes.size)
        loss = torch.zeros(())
        for t in range(task.steps):
            actions, states = run.step(demo.observations[:, t], states)
            for weight, action in zip(run.head_weights, actions, strict=True):
                loss = loss + weight * F.mse_loss(action, demo.expert_chunks[:, t])
        loss = loss / (task.steps * sum(run.head_weights))
        opt.zero_grad()
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(run.params, 1.0)
        opt.step()
        sched.step()
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.5f}")


def memory_path(model: ActionModel) -> StepFn:
    """The whole model with its blocks left out (Stage.forward_without_blocks): obs -> every
    stage's head's chunk (the exit heads', then the model's)."""

    def step(obs: torch.Tensor, states: States) -> tuple[list[torch.Tensor], States]:
        x, new_states, actions = obs, [], []
        for k in range(model.cfg.n_stages):
            x, memory = model.stage(k).forward_without_blocks(x, states[k])
            new_states.append(memory)
            actions.append(model.stage(k).action(x))
        return actions, new_states

    return step


def learn_memory(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """Phase (0): the stack of stage memories learns the expert's chunks, blocks left out.

    While the blocks are the identity and the proposals' weights zero (as initialised),
    leaving them out changes nothing but the cost: an update costs a small fraction of a
    phase-(a) one, so this phase affords the thousands of episodes that a recurrent model
    needs to learn to keep track of a hidden target. Every stage's head learns beside the
    last one (deep supervision, each exit head's loss weighted `exit_loss_weight` against the
    last's 1), so that each depth learns to answer on its own while the stack serves the last
    head most; the exit heads' output layers are refitted afterwards (phase (b)) on the states
    the trained model visits. Stage 0's weights that read the observation (its memory's gates
    and its embedding) learn faster: see INPUT_LEARNING_RATE_FACTOR.
    """
    first = model.stage(0)
    gates, embed = first.input_gates, first.embed
    assert isinstance(gates, nn.Linear) and embed is not None  # stage 0 reads the observation
    params = [
        p
        for k in range(model.cfg.n_stages)
        for name, p in model.stage(k).named_parameters()
        if not name.startswith("blocks.") and not name.startswith("memory_cell.from_input.weight")
    ]
    model.train()
    run = Imitation(
        name="memory",
        step=memory_path(model),
        fresh=lambda batch: trainable_fresh_states(model, batch),
        params=params,
        updates=settings.memory_iterations,
        batch_episodes=settings.memory_batch_episodes,
        learning_rate=settings.memory_learning_rate,
        head_weights=[settings.exit_loss_weight] * (model.cfg.n_stages - 1) + [1.0],
        input_weights=[gates.weight, embed.proj.weight],
    )
    imitate_expert(run, task, settings)
    model.eval()


def imitate(model: ActionModel, task: TaskConfig, settings: TrainSettings) -> None:
    """Phase (a): the whole model, blocks included, and the last stage's head learn the
    expert's chunks, in truncated windows (a step through the blocks is expensive)."""
    if settings.iterations == 0:
        return
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
        states = trainable_fresh_states(model, episodes.size)
        for start in range(0, task.steps, settings.bptt_steps):
            end = min(start + settings.bptt_steps, task.steps)
            loss = torch.zeros(())
            for t in range(start, end):
                action, states = model.forward(demo.observations[:, t], states)
                loss = loss + F.mse_loss(action, demo.expert_chunks[:, t])
            loss = loss / (end - start)
            opt.zero_grad()
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            states = [s.detach() for s in states]
        bar.set_postfix(loss=f"{loss.item():.5f}")
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
    """Phase (b): each exit head's output layer, on features computed once (trunk frozen; the
    head's LayerNorm stays as it is, so its pooled output does not change while we fit). The
    last stage's head learned with the trunk and stays as it is."""
    for k, features in enumerate(data.features[:-1]):
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
