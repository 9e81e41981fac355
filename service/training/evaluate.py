"""The quality table: how good each serve mode is, measured offline on held-out episodes.

For every mode (FULL, EARLY_EXIT from each non-last stage, FALLBACK, and FULL with its state
lost at every step) the policy drives the arm in closed loop; its action error is the mean
squared difference to the expert's chunk at the states it visits, its success the share of
episodes it brings to rest on the target. A GRU trained directly on the expert (baseline.py)
is measured the same way, so that FULL's figures have a yardstick. The degrade policy reads these numbers to decide
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
from tqdm import tqdm

from fallback.quality import ModeQuality
from service.model.action_model import ActionModel
from service.model.student import Student
from service.model.weights import model_version
from service.training.modes import EarlyExitPolicy, FullPolicy, StateLostPolicy, StudentPolicy
from service.training.task import Episodes, Policy, TaskConfig, make_episodes, observe, rollout

JSON_FILE = "quality.json"
PLOT_FILE = "quality.png"
LATENCY_STEPS = 32

# What a policy worth serving shows (issue 17). Errors relative to FULL's: the first stage's
# exit head must be clearly worse (else the later stages add nothing and the model is deeper
# than the task), the deepest exit head and the student close enough to stand in for FULL, and
# losing the state must hurt (else the task would not need memory). FULL itself must succeed
# and be no worse than a GRU trained directly on the expert.
FIRST_EXIT_TARGET = (">=", 1.5)
DEEPEST_EXIT_TARGET = ("<=", 1.3)
FALLBACK_TARGET = ("<=", 1.5)
STATE_LOST_TARGET = (">=", 2.0)
FULL_SUCCESS_TARGET = (">=", 0.9)
BASELINE_TARGET = ("<=", 1.0)  # FULL's error over the baseline's


@dataclass(frozen=True)
class Target:
    name: str  # a mode, or full_success / full_vs_baseline
    what: str  # how `ratio` is measured, for the printed verdict
    relation: str
    factor: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= self.factor if self.relation == "<=" else self.ratio >= self.factor

    @property
    def want(self) -> str:
        return f"{self.relation} {self.factor}"


@dataclass(frozen=True)
class QualityTable:
    modes: dict[str, ModeQuality]
    seed: int
    episodes: int
    model_version: str
    baseline: ModeQuality | None = None  # the GRU trained directly on the expert, same episodes
    baseline_hidden: int | None = None
    cluster_p50_ms: dict[str, float] | None = None  # each mode through a real cluster

    @property
    def latency_factor(self) -> float | None:
        """FULL's p50 through a cluster over its in-process p50: what the coordinator's degrade
        policy multiplies the table's (in-process) latencies by. None until measured."""
        if self.cluster_p50_ms is None or "full" not in self.cluster_p50_ms:
            return None
        return self.cluster_p50_ms["full"] / max(self.modes["full"].p50_ms, 1e-6)

    def targets(self) -> list[Target]:
        full = self.modes["full"]
        exits = [name for name in self.modes if name.startswith("early_exit_")]
        wanted = [(exits[-1], DEEPEST_EXIT_TARGET)] if exits else []
        if len(exits) > 1:  # with one exit head, it is the deepest one, not a first of several
            wanted.insert(0, (exits[0], FIRST_EXIT_TARGET))
        wanted += [("fallback", FALLBACK_TARGET), ("state_lost", STATE_LOST_TARGET)]
        out = [
            Target(mode, "error x full", relation, factor, self.modes[mode].error / _floor(full))
            for mode, (relation, factor) in wanted
        ]
        out.append(Target("full_success", "success", *FULL_SUCCESS_TARGET, full.success))
        if self.baseline is not None:
            ratio = full.error / _floor(self.baseline)
            out.append(Target("full_vs_baseline", "error x GRU baseline", *BASELINE_TARGET, ratio))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "modes": {name: asdict(q) for name, q in self.modes.items()},
            "seed": self.seed,
            "episodes": self.episodes,
            "model_version": self.model_version,
            "targets": {
                t.name: {"ratio": t.ratio, "want": t.want, "met": t.met} for t in self.targets()
            },
        }
        if self.cluster_p50_ms is not None:
            out["cluster_p50_ms"] = self.cluster_p50_ms
            out["latency_factor"] = self.latency_factor
        if self.baseline is not None:
            out["baseline"] = {
                "error": self.baseline.error,
                "success": self.baseline.success,
                "hidden": self.baseline_hidden,
            }
        return out

    def format(self) -> str:
        full = _floor(self.modes["full"])
        lines = [
            f"quality of {self.model_version} on {self.episodes} held-out episodes (seed {self.seed})",
            f"{'mode':<14} {'error':>9} {'x full':>7} {'success':>8} {'p50 ms':>8} {'cluster':>8}",
        ]
        cluster = self.cluster_p50_ms or {}
        for name, q in self.modes.items():
            served = f"{cluster[name]:8.2f}" if name in cluster else f"{'-':>8}"
            lines.append(
                f"{name:<14} {q.error:9.5f} {q.error / full:7.2f} {q.success:8.1%} {q.p50_ms:8.2f}"
                f" {served}"
            )
        if self.baseline is not None:
            b = self.baseline
            lines.append(
                f"{'GRU baseline':<14} {b.error:9.5f} {b.error / full:7.2f} {b.success:8.1%}"
                f" (GRU {self.baseline_hidden} trained directly on the expert)"
            )
        if self.latency_factor is not None:
            lines.append(
                f"latency factor (FULL through a cluster / in process): {self.latency_factor:.2f}"
            )
        for t in self.targets():
            verdict = "met" if t.met else "MISSED"
            lines.append(f"target {t.name}: {t.what} {t.want}: {t.ratio:.2f} {verdict}")
        return "\n".join(lines)

    def save(self, directory: Path) -> None:
        """quality.json and quality.png into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        self.plot(directory / PLOT_FILE)

    def plot(self, path: Path) -> None:
        names = list(self.modes)
        qualities = list(self.modes.values())
        if self.baseline is not None:
            names.append("GRU baseline")
            qualities.append(self.baseline)
        fig = Figure(figsize=(10, 3.5), layout="constrained")
        panels = (
            ("action error (MSE vs expert)", [q.error for q in qualities]),
            ("success", [q.success for q in qualities]),
            ("p50 latency per step (ms, batch 1)", [q.p50_ms for q in qualities]),
        )
        colours = ["C0" if n == "full" else "C2" if n == "GRU baseline" else "C1" for n in names]
        for ax, (title, values) in zip(fig.subplots(1, len(panels)), panels, strict=True):
            ax.bar(names, values, color=colours)
            ax.set_title(title, fontsize=9)
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        fig.axes[1].set_ylim(0, 1)
        if self.cluster_p50_ms:
            served = [n for n in names if n in self.cluster_p50_ms]
            fig.axes[2].plot(
                served, [self.cluster_p50_ms[n] for n in served], "kD", label="through a cluster"
            )
            fig.axes[2].set_title("p50 per step (ms, batch 1; bars: in process)", fontsize=9)
            fig.axes[2].legend(fontsize=7)
        fig.suptitle(f"{self.model_version}: {self.episodes} episodes, seed {self.seed}")
        fig.savefig(path, dpi=100)


def _floor(q: ModeQuality) -> float:
    """An error to divide by: a perfect policy's 0 would make every ratio infinite."""
    return max(q.error, 1e-12)


def policies(model: ActionModel) -> dict[str, Policy]:
    modes: dict[str, Policy] = {"full": FullPolicy(model)}
    for k in range(model.cfg.n_stages - 1):
        modes[f"early_exit_{k}"] = EarlyExitPolicy(model, k)
    modes["fallback"] = StudentPolicy(model.student)
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


def measure(
    policy: Policy, task: TaskConfig, held_out: Episodes, latency_obs: torch.Tensor
) -> ModeQuality:
    """One policy in closed loop on the held-out episodes, and its step latency."""
    run = rollout(task, held_out, policy)
    return ModeQuality(
        error=run.action_error(),
        success=float(run.success(task).float().mean()),
        p50_ms=step_latency_ms(policy, latency_obs),
    )


def evaluate(
    model: ActionModel,
    task: TaskConfig,
    episodes: int,
    seed: int,
    version: str | None = None,
    baseline: Student | None = None,
) -> QualityTable:
    """Every serve mode of `model` (and the GRU baseline, if given) on `episodes` episodes
    drawn from `seed`."""
    model.eval()
    held_out = make_episodes(task, episodes, seed)
    one = make_episodes(task, 1, seed)
    latency_obs = torch.cat(
        [observe(task, one, one.start, t) for t in range(min(task.steps, LATENCY_STEPS))]
    )
    modes = {
        name: measure(policy, task, held_out, latency_obs)
        for name, policy in tqdm(policies(model).items(), desc="evaluate", leave=False)
    }
    return QualityTable(
        modes=modes,
        seed=seed,
        episodes=episodes,
        model_version=version or model_version(model),
        baseline=None
        if baseline is None
        else measure(StudentPolicy(baseline), task, held_out, latency_obs),
        baseline_hidden=None if baseline is None else baseline.hidden_size,
    )
