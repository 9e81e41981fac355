"""A simulated 7-joint arm that turns action chunks into motion and motion into observations."""

from __future__ import annotations

import math

import torch


class SimulatedArm:
    """Joint positions and velocities, a goal that drifts, and the last command sent.

    The observation is [q, qd, goal(3), last command], cut or zero-padded to observation_dim.
    """

    def __init__(self, observation_dim: int, joints: int, seed: int, max_speed: float = 1.0):
        gen = torch.Generator().manual_seed(seed)
        self.observation_dim, self.joints, self.max_speed = observation_dim, joints, max_speed
        self.q = (torch.rand(joints, generator=gen) - 0.5) * 2.0
        self.qd = torch.zeros(joints)
        self.goal_phase = float(torch.rand((), generator=gen)) * 2 * math.pi
        self.command = torch.zeros(joints)
        self.t = 0.0

    def goal(self) -> torch.Tensor:
        p = self.goal_phase + 0.3 * self.t
        return torch.tensor([0.5 * math.cos(p), 0.5 * math.sin(p), 0.3 + 0.1 * math.sin(2 * p)])

    def observation(self) -> torch.Tensor:
        full = torch.cat([self.q, self.qd, self.goal(), self.command]).float()
        out = torch.zeros(self.observation_dim)
        n = min(self.observation_dim, full.numel())
        out[:n] = full[:n]
        return out

    def apply(self, chunk: torch.Tensor, dt_s: float) -> None:
        """Execute the chunk's first command (a joint velocity) for one control period."""
        self.command = chunk[0].clamp(-1.0, 1.0) * self.max_speed
        self.qd = self.command
        self.q = (self.q + self.qd * dt_s).clamp(-math.pi, math.pi)
        self.t += dt_s
