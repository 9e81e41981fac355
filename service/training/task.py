"""A reaching task that a policy cannot solve well without memory, and its analytic expert.

A 7-joint arm (joint space, positions in [-1, 1]) must catch a target that moves at a constant
velocity the policy never observes. The target is shown, with noise, for the first `cue_steps`
steps and afterwards only on a random `visible_prob` share of steps: between sightings a policy
must remember where the target was and how fast it moved. The target is seen from the arm,
as its offset from the arm's joints (`camera_view`; with `camera_turn` the camera's frame also
turns with the joints, which a policy must undo: a harder variant, off by default, that the
default training budget did not learn). An action chunk [horizon, joints] is
joint position set-points for the next `horizon` steps, in [-1, 1] like the model's action head;
the arm servos toward the chunk's first set-point at most `max_step` per step (only the first is
executed, as on the robot). The expert sees the true target and velocity. Everything random
about an episode is drawn up front from its seed, so the same seed gives the same episodes
whatever the policy does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class TaskConfig:
    joints: int = 7
    horizon: int = 8
    observation_dim: int = 24
    steps: int = 48
    max_step: float = 0.06  # the most a joint travels in one step
    target_range: float = 0.7  # the target starts inside [-range, range]...
    drift: float = 0.2  # ...and travels at most this far per joint over the episode
    cue_steps: int = 4
    visible_prob: float = 0.1
    target_noise: float = 0.02
    joint_noise: float = 0.01
    tolerance: float = 0.15  # success: RMS joint error to the target below this...
    settle_steps: int = 8  # ...at each of the episode's last steps
    camera_turn: float = 0.0  # the camera frame turns by this x pi per unit of joint (0: fixed)

    def __post_init__(self) -> None:
        if self.observation_dim < 2 * self.joints + 2:
            raise ValueError(f"observation_dim {self.observation_dim} < {2 * self.joints + 2}")


class Policy(Protocol):
    """What a rollout drives the arm with: a batch of observations in, action chunks out."""

    def reset(self, batch: int) -> None: ...

    def act(self, obs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Episodes:
    """A batch of B episodes: initial conditions and every noise draw, [B, ...] each."""

    start: torch.Tensor  # [B, J] joint positions at t=0
    target_start: torch.Tensor  # [B, J]
    velocity: torch.Tensor  # [B, J] target motion per step, never observed
    visible: torch.Tensor  # [B, T] bool
    target_noise: torch.Tensor  # [B, T, J]
    joint_noise: torch.Tensor  # [B, T, J]
    action_noise: torch.Tensor  # [B, T, J] standard normal, scaled by a rollout's action_noise

    @property
    def size(self) -> int:
        return self.start.shape[0]

    def target(self, t: int) -> torch.Tensor:
        return self.target_start + self.velocity * t


def derive_seed(purpose: str, seed: int, index: int) -> int:
    """A seed for one stream of episodes (e.g. training batch `index`), apart from all others."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def make_episodes(cfg: TaskConfig, count: int, seed: int) -> Episodes:
    gen = torch.Generator().manual_seed(seed)
    j, t = cfg.joints, cfg.steps

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2 - 1

    start = uniform(count, j)
    target_start = uniform(count, j) * cfg.target_range
    visible = torch.rand(count, t, generator=gen) < cfg.visible_prob
    visible[:, : cfg.cue_steps] = True
    return Episodes(
        start=start,
        target_start=target_start,
        velocity=uniform(count, j) * cfg.drift / t,
        visible=visible,
        target_noise=torch.randn(count, t, j, generator=gen) * cfg.target_noise,
        joint_noise=torch.randn(count, t, j, generator=gen) * cfg.joint_noise,
        action_noise=torch.randn(count, t, j, generator=gen),
    )


def camera_view(cfg: TaskConfig, q: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """What the arm's camera reports of `offset` (target minus arm, [B, J]) at pose `q`.

    The camera rides on the arm, so its frame turns with the joints: each pair of offsets
    (joints 0-1, 2-3, ...) comes rotated by an angle set by a joint further along the arm
    (pair p by joint J-1-p, `camera_turn` x pi per unit). A policy must undo the turn (sines,
    cosines and products of what it sees) before it can remember where the target is. With
    the default camera_turn 0 the frame is fixed and the offset comes as it is.
    """
    view = offset.clone()
    for p in range(cfg.joints // 2):
        angle = cfg.camera_turn * torch.pi * q[:, cfg.joints - 1 - p]
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = offset[:, 2 * p], offset[:, 2 * p + 1]
        view[:, 2 * p] = cos * a - sin * b
        view[:, 2 * p + 1] = sin * a + cos * b
    return view


def observe(cfg: TaskConfig, ep: Episodes, q: torch.Tensor, t: int) -> torch.Tensor:
    """[noisy q, noisy target as the camera sees it (camera_view) or 0 when hidden, visible
    flag, progress t/T, zero padding]."""
    j = cfg.joints
    obs = torch.zeros(ep.size, cfg.observation_dim)
    seen = ep.visible[:, t].unsqueeze(1)
    obs[:, :j] = q + ep.joint_noise[:, t]
    seen_offset = camera_view(cfg, q, ep.target(t) + ep.target_noise[:, t] - q)
    obs[:, j : 2 * j] = torch.where(seen, seen_offset, 0.0)
    obs[:, 2 * j] = seen.squeeze(1).float()
    obs[:, 2 * j + 1] = t / cfg.steps
    return obs


def expert(cfg: TaskConfig, ep: Episodes, q: torch.Tensor, t: int) -> torch.Tensor:
    """The set-points that catch the target soonest and then ride along with it: [B, H, J].

    Each joint heads for where the target will be at full speed, then follows it; so while
    tracking, a chunk is the target's future path, which only a policy that has kept track of
    the target's position and velocity can know.
    """
    planned, chunk = q, []
    for h in range(1, cfg.horizon + 1):
        planned = advance(cfg, planned, ep.target(t + h))
        chunk.append(planned)
    return torch.stack(chunk, dim=1)


def advance(cfg: TaskConfig, q: torch.Tensor, setpoint: torch.Tensor) -> torch.Tensor:
    """One step of the arm: each joint moves toward its set-point, at most max_step."""
    move = (setpoint.clamp(-1.0, 1.0) - q).clamp(-cfg.max_step, cfg.max_step)
    return (q + move).clamp(-1.0, 1.0)


def tracking_error(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: RMS joint error of the arm at `q` to `target` ([B, J] each)."""
    return (q - target).pow(2).mean(dim=1).sqrt()


def settled(cfg: TaskConfig, errors: torch.Tensor) -> torch.Tensor:
    """[B] bool, the task's success rule on whole episodes' tracking errors [B, T]: within
    tolerance at each of the last settle_steps steps."""
    return (errors[:, -cfg.settle_steps :] < cfg.tolerance).all(dim=1)


@dataclass(frozen=True)
class Rollout:
    observations: torch.Tensor  # [B, T, D]
    expert_chunks: torch.Tensor  # [B, T, H, J]: the expert's answer at each visited state
    chunks: torch.Tensor  # [B, T, H, J]: what the driving policy answered
    tracking_error: torch.Tensor  # [B, T]: RMS joint error to the target after each step

    def success(self, cfg: TaskConfig) -> torch.Tensor:
        """[B] bool: within tolerance at each of the last settle_steps steps."""
        return settled(cfg, self.tracking_error)

    def action_error(self) -> float:
        return float((self.chunks - self.expert_chunks).pow(2).mean())


@torch.no_grad()
def rollout(
    cfg: TaskConfig, ep: Episodes, policy: Policy | None, action_noise: float = 0.0
) -> Rollout:
    """Closed loop: `policy` (the expert when None) drives the arm for a whole episode.

    `action_noise` perturbs the executed command, so that expert-driven data also covers the
    states just off the expert's path that a learned policy will drift into.
    """
    q = ep.start
    if policy is not None:
        policy.reset(ep.size)
    observations, experts, chunks, errors = [], [], [], []
    for t in range(cfg.steps):
        obs = observe(cfg, ep, q, t)
        wanted = expert(cfg, ep, q, t)
        chunk = wanted if policy is None else policy.act(obs)
        q = advance(cfg, q, chunk[:, 0] + action_noise * cfg.max_step * ep.action_noise[:, t])
        observations.append(obs)
        experts.append(wanted)
        chunks.append(chunk)
        errors.append(tracking_error(q, ep.target(t + 1)))
    return Rollout(
        observations=torch.stack(observations, dim=1),
        expert_chunks=torch.stack(experts, dim=1),
        chunks=torch.stack(chunks, dim=1),
        tracking_error=torch.stack(errors, dim=1),
    )


class ReachArm:
    """One episode of the task played one step at a time, as a robot plays it: the set-point
    of each tick comes from outside (say an action buffer fed by a served policy), not from a
    policy called in lockstep as in `rollout`. The same dynamics, observations and success rule.
    """

    def __init__(self, cfg: TaskConfig, seed: int) -> None:
        self.cfg = cfg
        self.episode = make_episodes(cfg, 1, seed)
        self.q = self.episode.start
        self.t = 0  # steps taken
        self.errors: list[torch.Tensor] = []  # [1] each: after each step

    @property
    def done(self) -> bool:
        return self.t >= self.cfg.steps

    def observation(self) -> torch.Tensor:
        """[observation_dim]: what the robot sends for this step."""
        return observe(self.cfg, self.episode, self.q, self.t)[0]

    def apply(self, setpoint: torch.Tensor | None) -> None:
        """One step toward `setpoint` [J]; None keeps the arm where it is (no command yet)."""
        if self.done:
            raise RuntimeError(f"the episode is over ({self.cfg.steps} steps)")
        if setpoint is not None:
            self.q = advance(self.cfg, self.q, setpoint.reshape(1, -1))
        self.t += 1
        self.errors.append(tracking_error(self.q, self.episode.target(self.t)))

    def final_error(self) -> float:
        return float(self.errors[-1][0]) if self.errors else float("nan")

    def success(self) -> bool:
        """The task's rule, once the episode is over."""
        return self.done and bool(settled(self.cfg, torch.stack(self.errors, dim=1))[0])
