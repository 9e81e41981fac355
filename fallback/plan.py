"""How one step is served, as one pure decision: `plan_step(view) -> Plan`.

The coordinator looks (stage health, which stage states are level, time left, the version's
quality table, whether its student is loaded, a version switch under way), calls
`plan_step`, executes the plan, folds the result into the view (a stage failed, states are
level now, the replay budget is spent) and plans again until a plan answers or refuses.
Every serve decision of the step path is made here; the coordinator has no second one.

The rules, in order:

1. No time left: `NoPath(DEADLINE)`.
2. A version switch whose new states are ready, with every stage of the new version healthy:
   `Full` on the new version (the session moves with this step). One whose history the
   observation log cannot replay (it does not reach back to where the rebuild would start):
   `Full(fresh=True)` on the new version at once, flagged `state_reset`; waiting cannot
   bring the history back, and replaying the part the log holds would still not be exact.
3. A switch not ready yet, the new version whole: `CatchUp` on the new version within the
   replay budget (its progress is committed with this step's answer, tagged with the
   version); when the session's own version is no longer whole (its replicas are reloading)
   and `FINISH_MARGIN` times the rest of the rebuild's estimate fits, a finishing catch-up of
   that budget at once, since only a degraded answer is left otherwise. One estimated not to
   fit is not tried: it would spend half the step and still answer degraded, late.
4. Stages of the session's version lag (steps were answered without them), some of them in
   the healthy prefix, replay budget left: `CatchUp` of that prefix.
5. The answer from the stages that are healthy *and* level: the degrade policy
   (`fallback.policy.decide`) when the version ships a quality table; otherwise the plain rule
   (FULL when whole, else the deepest exit head, else the student, confidence 0: unmeasured).
   FALLBACK needs the student loaded.
6. Nothing can answer from those stages, but the catch-up could finish within this step
   (once per step, up to `1 - CATCH_UP_RESERVE` of the time left; for a switch, only when
   its estimate fits): `CatchUp(finish=True)`, the switch first. A finishing catch-up that
   did not finish, or a switch estimated not to: `Full(fresh=True)`, FULL from fresh states,
   flagged `state_reset` (its progress cannot be committed without an answer, so a retry
   would replay as far and fall short again: the session would never move).
7. Something could answer with more time: `Shed` with a retry hint; nothing could at all:
   `NoPath(NOTHING_SERVES)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from fallback.policy import PolicyConfig, Reason, StepConditions, best_latency_s, decide
from fallback.priority import Priority
from fallback.serve_mode import ServeMode

# A catch-up never uses this share of the step's time left: the step must still be answered
# (and its progress committed) after it.
CATCH_UP_RESERVE = 0.5
SHED_RETRY_AFTER_S = 0.5  # a shed step's retry hint when nothing can serve it now
# A switch's finishing catch-up while a degraded answer waits gets this many times its
# estimated replay (a busy machine replays slower than usual), and is tried only if that fits.
FINISH_MARGIN = 2.0


class NoPathReason(StrEnum):
    DEADLINE = "deadline"  # out of time (the robot retries the same seq)
    NOTHING_SERVES = "nothing_serves"  # no stage prefix, no student: UNAVAILABLE


@dataclass(frozen=True, kw_only=True)
class SwitchView:
    """The model version the session is moving to, and how far its states are."""

    version: str
    healthy: tuple[bool, ...]  # per stage: a usable replica of `version`
    ready: bool  # the new version's states reflect the session's last step
    exact: bool = True  # the log reaches back to where the rebuild resumes (else rule 2)
    replay_s: float = 0.0  # the rebuild's estimated replay time left (0: unknown)


@dataclass(frozen=True, kw_only=True)
class StepView:
    """What the coordinator saw when it planned; `with_*` fold an execution's result in."""

    version: str  # the session's own model version
    healthy: tuple[bool, ...]  # per stage: a usable replica of `version`
    level: tuple[bool, ...]  # per stage: its state reflects the session's last step
    time_left_s: float
    priority: Priority
    policy: PolicyConfig | None  # the version's quality table; None: unmeasured weights
    student_loaded: bool
    catch_up_budget_s: float  # budgeted replay this step may still do (0 once spent)
    finish_allowed: bool = True  # an unbudgeted (finishing) catch-up was not tried yet
    switch: SwitchView | None = None

    @property
    def n_stages(self) -> int:
        return len(self.healthy)

    def with_stage_failed(self, version: str, stage: int) -> StepView:
        """A call to `stage` of `version` failed under this step: no replica is left for it."""
        if self.switch is not None and version == self.switch.version:
            healthy = _without(self.switch.healthy, stage)
            return replace(self, switch=replace(self.switch, healthy=healthy))
        return replace(self, healthy=_without(self.healthy, stage))

    def without_student(self) -> StepView:
        """The student failed under this step (say it answered non-finite values)."""
        return replace(self, student_loaded=False)

    def with_catch_up(self, plan: CatchUp, complete: bool, time_left_s: float) -> StepView:
        spent = replace(
            self,
            time_left_s=time_left_s,
            catch_up_budget_s=0.0,  # any catch-up spends it
            finish_allowed=self.finish_allowed and not plan.finish,
        )
        if not complete:
            return spent
        if self.switch is not None and plan.version == self.switch.version:
            return replace(spent, switch=replace(self.switch, ready=True))
        level = tuple(ok or k < plan.depth for k, ok in enumerate(self.level))
        return replace(spent, level=level)


@dataclass(frozen=True, kw_only=True)
class Full:
    version: str  # the session's version, or the switch's once its states are ready
    fresh: bool = False  # from fresh states: the history could not be replayed in time (rule 6)


@dataclass(frozen=True, kw_only=True)
class CatchUp:
    version: str
    depth: int  # bring stages 0..depth-1 level
    budget_s: float
    finish: bool = False  # the once-per-step catch-up that tries to finish (rule 6)


@dataclass(frozen=True, kw_only=True)
class EarlyExit:
    stage: int
    confidence: float


@dataclass(frozen=True, kw_only=True)
class Fallback:
    confidence: float


@dataclass(frozen=True, kw_only=True)
class Shed:
    retry_after_s: float
    reason: str  # a metrics label (fallback.policy.Reason)
    detail: str


@dataclass(frozen=True, kw_only=True)
class NoPath:
    reason: NoPathReason
    detail: str


Plan = Full | CatchUp | EarlyExit | Fallback | Shed | NoPath
Answer = Full | EarlyExit | Fallback  # the plans that answer the step


def plan_step(view: StepView) -> Plan:
    """The next thing to do for a step, by the rules of the module docstring."""
    if view.time_left_s <= 0:
        return NoPath(reason=NoPathReason.DEADLINE, detail="the step's deadline passed")
    switch = view.switch
    if switch is not None and all(switch.healthy):
        if switch.ready:
            return Full(version=switch.version)
        if not switch.exact:
            return Full(version=switch.version, fresh=True)
        hurry = _hurry(view, switch) if not all(view.healthy) else None
        if hurry is not None:  # the old version is going
            return hurry
        if view.catch_up_budget_s > 0:
            return CatchUp(version=switch.version, depth=view.n_stages, budget_s=_budget(view))
    prefix = _healthy_prefix(view.healthy)
    if view.catch_up_budget_s > 0 and not all(view.level[:prefix]):
        return CatchUp(version=view.version, depth=prefix, budget_s=_budget(view))
    usable = tuple(h and ok for h, ok in zip(view.healthy, view.level, strict=True))
    answer, why_not = _answer(view, usable, view.time_left_s)
    if answer is not None:
        return answer
    return _when_nothing_answers(view, usable, why_not)


def admission_latency_s(view: StepView) -> float | None:
    """The fastest acceptable answer's latency, for admission to tell "can still be served
    before its deadline" from "cannot"; None when unknown (unmeasured weights, or the
    student, usually the fastest, is not loaded)."""
    if view.policy is None or not view.student_loaded:
        return None
    return best_latency_s(view.policy, view.healthy, view.priority)


def _answer(
    view: StepView, usable: tuple[bool, ...], time_left_s: float
) -> tuple[Answer | None, str]:
    """The answer from the `usable` stages (rule 5), or None and why not."""
    if view.policy is None:
        return _unmeasured(view, usable)
    decision = decide(StepConditions(usable, time_left_s, view.priority), view.policy)
    if decision.mode is ServeMode.FULL:
        return Full(version=view.version), ""
    if decision.mode is ServeMode.EARLY_EXIT:
        assert decision.exit_stage is not None
        return EarlyExit(stage=decision.exit_stage, confidence=decision.confidence), ""
    if decision.mode is ServeMode.FALLBACK:
        if view.student_loaded:
            return Fallback(confidence=decision.confidence), ""
        return None, "the student is not loaded"
    return None, decision.detail or decision.reason.value


def _unmeasured(view: StepView, usable: tuple[bool, ...]) -> tuple[Answer | None, str]:
    """Weights without a quality table: every degraded answer says confidence 0."""
    if all(usable):
        return Full(version=view.version), ""
    prefix = _healthy_prefix(usable)
    if prefix > 0:
        return EarlyExit(stage=prefix - 1, confidence=0.0), ""
    if view.student_loaded:
        return Fallback(confidence=0.0), ""
    return None, "stage 0 has no usable replica and the student is not loaded"


def _when_nothing_answers(view: StepView, usable: tuple[bool, ...], why_not: str) -> Plan:
    """Rules 6 and 7."""
    switch = view.switch
    if switch is not None and all(switch.healthy) and not switch.ready:
        if _finish_fits(view, switch):
            return _finish(view, switch.version)
        return Full(version=switch.version, fresh=True)
    if all(view.healthy) and not all(view.level):
        if view.finish_allowed:
            return _finish(view, view.version)
        return Full(version=view.version, fresh=True)  # a retry would replay as far again
    unlimited, _ = _answer(view, usable, math.inf)
    if unlimited is None:
        return NoPath(reason=NoPathReason.NOTHING_SERVES, detail=why_not)
    return Shed(retry_after_s=SHED_RETRY_AFTER_S, reason=Reason.NOTHING_FITS.value, detail=why_not)


def _finish(view: StepView, version: str) -> CatchUp:
    """The once-per-step catch-up that tries to reach the present."""
    budget = view.time_left_s * (1 - CATCH_UP_RESERVE)
    return CatchUp(version=version, depth=view.n_stages, budget_s=budget, finish=True)


def _hurry(view: StepView, switch: SwitchView) -> CatchUp | None:
    """Rule 3's finishing catch-up, when `FINISH_MARGIN` times its estimate fits: given no
    more than that, since an answer degraded on the old version must still come quickly if
    the estimate was wrong. Unknown estimate (0): half the time left, as rule 6."""
    if not view.finish_allowed:
        return None
    if not switch.replay_s:
        return _finish(view, switch.version)
    budget = FINISH_MARGIN * switch.replay_s
    if budget > view.time_left_s * (1 - CATCH_UP_RESERVE):
        return None
    return CatchUp(version=switch.version, depth=view.n_stages, budget_s=budget, finish=True)


def _finish_fits(view: StepView, switch: SwitchView) -> bool:
    """The finishing catch-up of `switch` was not tried yet and its estimate fits."""
    return view.finish_allowed and switch.replay_s <= view.time_left_s * (1 - CATCH_UP_RESERVE)


def _budget(view: StepView) -> float:
    return min(view.catch_up_budget_s, view.time_left_s * (1 - CATCH_UP_RESERVE))


def _healthy_prefix(healthy: tuple[bool, ...]) -> int:
    return next((k for k, ok in enumerate(healthy) if not ok), len(healthy))


def _without(healthy: tuple[bool, ...], stage: int) -> tuple[bool, ...]:
    return tuple(ok and k != stage for k, ok in enumerate(healthy))
