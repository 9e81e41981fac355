"""The quality table: how good each serve mode is, measured offline on held-out episodes.

For every mode (FULL, EARLY_EXIT from each non-last stage, FALLBACK, and FULL with its state
lost at every step) the policy drives the arm in closed loop; its action error is the mean
squared difference to the expert's chunk at the states it visits, its success the share of
episodes it brings to rest on the target. The degrade policy reads these numbers to decide
whether a stage's exit head is good enough; `actionmesh bench --degraded` reuses `evaluate`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from fallback.quality import ModeQuality
from service.model.action_model import ActionModel
from service.model.weights import model_version
from service.training.modes import EarlyExitPolicy, FallbackPolicy, FullPolicy, StateLostPolicy
from service.training.task import Policy, TaskConfig, make_episodes, observe, rollout

JSON_FILE = "quality.json"
PLOT_FILE = "quality.png"
LATENCY_STEPS = 32

# Error relative to FULL's: the deepest exit head and the student must be close enough to stand
# in for FULL, and losing the state must hurt (else the task would not need memory).
DEEPEST_EXIT_TARGET = ("<=", 1.3)
FALLBACK_TARGET = ("<=", 1.5)
STATE_LOST_TARGET = (">=", 2.0)


@dataclass(frozen=True)
class Target:
    mode: str
    relation: str
    factor: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= self.factor if self.relation == "<=" else self.ratio >= self.factor


@dataclass(frozen=True)
class QualityTable:
    modes: dict[str, ModeQuality]
    seed: int
    episodes: int
    model_version: str

    def targets(self) -> list[Target]:
        full = max(self.modes["full"].error, 1e-12)
        exits = [name for name in self.modes if name.startswith("early_exit_")]
        wanted = [(exits[-1], DEEPEST_EXIT_TARGET)] if exits else []
        wanted += [("fallback", FALLBACK_TARGET), ("state_lost", STATE_LOST_TARGET)]
        return [
            Target(mode, relation, factor, self.modes[mode].error / full)
            for mode, (relation, factor) in wanted
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "modes": {name: asdict(q) for name, q in self.modes.items()},
            "seed": self.seed,
            "episodes": self.episodes,
            "model_version": self.model_version,
            "targets": {
                t.mode: {"ratio": t.ratio, "want": f"{t.relation} {t.factor}", "met": t.met}
                for t in self.targets()
            },
        }

    def format(self) -> str:
        full = max(self.modes["full"].error, 1e-12)
        lines = [
            f"quality of {self.model_version} on {self.episodes} held-out episodes (seed {self.seed})",
            f"{'mode':<14} {'error':>9} {'x full':>7} {'success':>8} {'p50 ms':>8}",
        ]
        for name, q in self.modes.items():
            lines.append(
                f"{name:<14} {q.error:9.5f} {q.error / full:7.2f} {q.success:8.1%} {q.p50_ms:8.2f}"
            )
        for t in self.targets():
            verdict = "met" if t.met else "MISSED"
            lines.append(
                f"target {t.mode} error {t.relation} {t.factor}x full: {t.ratio:.2f}x {verdict}"
            )
        return "\n".join(lines)

    def save(self, directory: Path) -> None:
        """quality.json and quality.png into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        self.plot(directory / PLOT_FILE)

    def plot(self, path: Path) -> None:
        names = list(self.modes)
        fig = Figure(figsize=(10, 3.5), layout="constrained")
        panels = (
            ("action error (MSE vs expert)", [q.error for q in self.modes.values()]),
            ("success", [q.success for q in self.modes.values()]),
            ("p50 latency per step (ms, batch 1)", [q.p50_ms for q in self.modes.values()]),
        )
        for ax, (title, values) in zip(fig.subplots(1, len(panels)), panels, strict=True):
            ax.bar(names, values, color=["C0" if n == "full" else "C1" for n in names])
            ax.set_title(title, fontsize=9)
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        fig.axes[1].set_ylim(0, 1)
        fig.suptitle(f"{self.model_version}: {self.episodes} episodes, seed {self.seed}")
        fig.savefig(path, dpi=100)


def policies(model: ActionModel) -> dict[str, Policy]:
    modes: dict[str, Policy] = {"full": FullPolicy(model)}
    for k in range(model.cfg.n_stages - 1):
        modes[f"early_exit_{k}"] = EarlyExitPolicy(model, k)
    modes["fallback"] = FallbackPolicy(model)
    modes["state_lost"] = StateLostPolicy(model)
    return modes


def step_latency_ms(policy: Policy, observations: torch.Tensor) -> float:
    """Median wall time of one act() at batch 1 over the given [T, D] observations."""
    policy.reset(1)
    policy.act(observations[:1])  # warm-up: first-call allocations are not a step's cost
    times = []
    for obs in observations[1:]:
        start = time.perf_counter()
        policy.act(obs.unsqueeze(0))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def evaluate(
    model: ActionModel,
    task: TaskConfig,
    episodes: int,
    seed: int,
    version: str | None = None,
) -> QualityTable:
    """Every serve mode of `model` on `episodes` episodes drawn from `seed`."""
    model.eval()
    held_out = make_episodes(task, episodes, seed)
    one = make_episodes(task, 1, seed)
    latency_obs = torch.cat(
        [observe(task, one, one.start, t) for t in range(min(task.steps, LATENCY_STEPS))]
    )
    modes = {}
    for name, policy in policies(model).items():
        run = rollout(task, held_out, policy)
        modes[name] = ModeQuality(
            error=run.action_error(),
            success=float(run.success(task).float().mean()),
            p50_ms=step_latency_ms(policy, latency_obs),
        )
    return QualityTable(
        modes=modes,
        seed=seed,
        episodes=episodes,
        model_version=version or model_version(model),
    )
