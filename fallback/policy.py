"""The degrade policy: which serve mode answers a step, as a pure function.

The caller reads the clock, the routing table and the exit heads, and passes what it saw
(`StepConditions`); `decide` returns FULL, EARLY_EXIT(k), FALLBACK or SHED with a reason.
Modes are tried in this order of preference, and the first that qualifies serves:

1. FULL: every stage is healthy (has a usable replica) and FULL's latency fits.
2. EARLY_EXIT(k), deepest k first: stages 0..k are healthy, stage k's exit head is good
   enough (offline error <= `early_exit_max_error_ratio` x FULL's) and its latency fits.
3. FALLBACK (the distilled student, run in the coordinator, so always healthy): good enough
   (error <= `fallback_max_error_ratio` x FULL's) and its latency fits.
4. For a SAFETY step only, when no mode passed its quality bar: the lowest-error mode that is
   healthy and fits, whatever its error (usually FALLBACK). A labelled degraded answer beats
   none, and DESIGN says SAFETY is never shed while any path can serve it.
5. Otherwise SHED: nothing acceptable can answer before the deadline.

"Fits" means p50 latency x `latency_factor` <= the time left; latencies and errors come from
the offline quality table (`fallback.quality`).

Runtime confidence. The caller may pass a confidence in [0, 1] per mode, keyed like the
quality table (`early_exit_1`, ...): typically the exit head's own confidence once stage k
has run. A degraded mode whose runtime confidence is below `min_confidence` gives way to the
next qualifying mode (in the order above) that is not below it; a mode without a runtime
confidence is not judged by one. If every qualifying mode is below the floor, the preferred
one serves anyway: low confidence is reported in the reply, never hidden by a refusal. FULL
never gives way: it is the reference every other mode is measured against. So a caller that
decided EARLY_EXIT(1) before the step, ran stages 0..1 and got a doubtful exit head, calls
`decide` again with that confidence and the time now left, and may get FALLBACK.

Every decision carries the confidence its reply should report: the runtime one if given,
else the offline one (`quality_confidence`: FULL's error over the mode's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fallback.priority import Priority
from fallback.quality import (
    FALLBACK,
    FULL,
    ModeQuality,
    QualityTable,
    early_exit_name,
    quality_confidence,
)
from fallback.serve_mode import ServeMode


class Reason(StrEnum):
    """Why the decision is what it is (fit for a metrics label)."""

    HEALTHY = "healthy"  # FULL
    STAGE_DOWN = "stage_down"  # degraded: a stage FULL needs has no usable replica
    OVER_BUDGET = "over_budget"  # degraded: FULL does not fit the time left
    LOW_CONFIDENCE = "low_confidence"  # a better mode qualified but was doubtful at runtime
    SAFETY_OVERRIDE = "safety_override"  # below every quality bar, served because SAFETY
    NOTHING_FITS = "nothing_fits"  # SHED


@dataclass(frozen=True)
class PolicyConfig:
    """The quality table the rules judge by, and their thresholds. One per model version."""

    quality: QualityTable
    early_exit_max_error_ratio: float = 1.3  # an exit head's error vs FULL's, at most
    fallback_max_error_ratio: float = 1.5  # the student's error vs FULL's, at most
    min_confidence: float = 0.5  # runtime confidence below this gives way (module docstring)
    latency_factor: float = 1.0  # p50 x this must fit; raise it to leave room for the tail

    def __post_init__(self) -> None:
        if self.early_exit_max_error_ratio < 1 or self.fallback_max_error_ratio < 1:
            raise ValueError("error ratios are relative to FULL's error and must be >= 1")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.latency_factor <= 0:
            raise ValueError(f"latency_factor must be > 0, got {self.latency_factor}")

    @classmethod
    def from_quality_table(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Default thresholds over a parsed quality-table JSON; `dataclasses.replace` to tune."""
        return cls(QualityTable.from_dict(data))


@dataclass(frozen=True)
class StepConditions:
    """What the caller saw just before deciding."""

    stages_healthy: Sequence[bool]  # index k: stage k has a usable replica
    time_left_s: float  # until the step's deadline
    priority: Priority = Priority.NORMAL
    confidence: Mapping[str, float] = field(default_factory=dict)  # runtime, by mode name


@dataclass(frozen=True)
class Decision:
    mode: ServeMode | None  # None: SHED, nothing acceptable answers in time
    reason: Reason
    exit_stage: int | None = None  # set for EARLY_EXIT
    confidence: float = 0.0  # what the reply reports; 0 for SHED
    detail: str = ""  # the modes passed over and why, for logs and the shed message


@dataclass(frozen=True)
class _Mode:
    mode: ServeMode
    name: str  # the quality table's key
    quality: ModeQuality
    stages_needed: int  # stages 0..stages_needed-1 must be healthy
    max_error_ratio: float | None  # None: no quality bar (FULL)
    exit_stage: int | None = None


def decide(conditions: StepConditions, config: PolicyConfig) -> Decision:
    """The serve mode for one step, by the rules in the module docstring."""
    _check_stages(conditions.stages_healthy, config.quality)
    passed_over: list[str] = []
    qualified: list[_Mode] = []
    servable: list[_Mode] = []
    for mode in _modes_by_preference(config):
        why_not = _cannot_serve(mode, conditions, config)
        if why_not is None:
            servable.append(mode)
            why_not = _below_bar(mode, config)
        if why_not is None:
            qualified.append(mode)
        else:
            passed_over.append(f"{mode.name}: {why_not}")
    if qualified:
        chosen = _confident_choice(qualified, conditions, config, passed_over)
        reason = _reason(chosen, qualified[0], conditions)
    elif servable and conditions.priority is Priority.SAFETY:
        chosen = min(servable, key=lambda m: m.quality.error)
        reason = Reason.SAFETY_OVERRIDE
    else:
        return Decision(None, Reason.NOTHING_FITS, detail="; ".join(passed_over))
    offline = quality_confidence(chosen.quality, config.quality.full)
    confidence = conditions.confidence.get(chosen.name, offline)
    return Decision(chosen.mode, reason, chosen.exit_stage, confidence, "; ".join(passed_over))


def best_latency_s(
    config: PolicyConfig, stages_healthy: Sequence[bool], priority: Priority
) -> float | None:
    """The fastest latency any acceptable mode could answer in (for admission), None if none.

    Same rules as `decide` without a time limit: this is what admission control needs to tell
    "can still be served before its deadline" from "cannot".
    """
    _check_stages(stages_healthy, config.quality)
    unlimited = StepConditions(stages_healthy, time_left_s=float("inf"), priority=priority)
    usable = [
        mode
        for mode in _modes_by_preference(config)
        if _cannot_serve(mode, unlimited, config) is None
        and (priority is Priority.SAFETY or _below_bar(mode, config) is None)
    ]
    if not usable:
        return None
    return min(mode.quality.p50_ms for mode in usable) * config.latency_factor / 1000


def _check_stages(stages_healthy: Sequence[bool], quality: QualityTable) -> None:
    if len(stages_healthy) != quality.n_stages:
        raise ValueError(
            f"health for {len(stages_healthy)} stages, but the quality table is for {quality.n_stages}"
        )


def _modes_by_preference(config: PolicyConfig) -> list[_Mode]:
    quality = config.quality
    full = _Mode(ServeMode.FULL, FULL, quality.full, quality.n_stages, None)
    exits = [
        _Mode(
            ServeMode.EARLY_EXIT,
            early_exit_name(k),
            quality.early_exits[k],
            k + 1,
            config.early_exit_max_error_ratio,
            exit_stage=k,
        )
        for k in reversed(range(len(quality.early_exits)))
    ]
    student = _Mode(
        ServeMode.FALLBACK, FALLBACK, quality.fallback, 0, config.fallback_max_error_ratio
    )
    return [full, *exits, student]


def _cannot_serve(mode: _Mode, conditions: StepConditions, config: PolicyConfig) -> str | None:
    """Why `mode` cannot answer in time (a needed stage is down, or too slow), else None."""
    down = [k for k in range(mode.stages_needed) if not conditions.stages_healthy[k]]
    if down:
        return f"stage {down[0]} down"
    latency_ms = mode.quality.p50_ms * config.latency_factor
    if latency_ms > conditions.time_left_s * 1000:
        return f"{latency_ms:.1f} ms > {max(conditions.time_left_s, 0) * 1000:.1f} ms left"
    return None


def _below_bar(mode: _Mode, config: PolicyConfig) -> str | None:
    """Why `mode`'s offline quality is not good enough, else None."""
    if mode.max_error_ratio is None:
        return None
    bar = mode.max_error_ratio * config.quality.full.error
    if mode.quality.error > bar:
        return f"error {mode.quality.error:g} > {mode.max_error_ratio:g} x full's {config.quality.full.error:g}"
    return None


def _confident_choice(
    qualified: list[_Mode], conditions: StepConditions, config: PolicyConfig, passed_over: list[str]
) -> _Mode:
    """The first qualifying mode not doubtful at runtime; the first one if all are (FULL never is)."""
    doubtful: list[str] = []
    for mode in qualified:
        runtime = conditions.confidence.get(mode.name)
        if mode.mode is ServeMode.FULL or runtime is None or runtime >= config.min_confidence:
            passed_over.extend(doubtful)
            return mode
        doubtful.append(f"{mode.name}: confidence {runtime:.2f} < {config.min_confidence:g}")
    return qualified[0]


def _reason(chosen: _Mode, preferred: _Mode, conditions: StepConditions) -> Reason:
    if chosen is not preferred:
        return Reason.LOW_CONFIDENCE
    if chosen.mode is ServeMode.FULL:
        return Reason.HEALTHY
    return Reason.OVER_BUDGET if all(conditions.stages_healthy) else Reason.STAGE_DOWN
