"""The step planner, table-driven: every Plan variant and every rule of fallback.plan."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fallback.plan import (
    CATCH_UP_RESERVE,
    FINISH_MARGIN,
    CatchUp,
    EarlyExit,
    Fallback,
    Full,
    NoPath,
    NoPathReason,
    Plan,
    Shed,
    StepView,
    SwitchView,
    admission_latency_s,
    plan_step,
)
from fallback.priority import Priority
from tests.support.quality_tables import policy

UP, DOWN = True, False
ALL = (UP, UP, UP)


MEASURED = policy()


def view(**changes: object) -> StepView:
    base = StepView(
        version="v1",
        healthy=ALL,
        level=ALL,
        time_left_s=1.0,
        priority=Priority.NORMAL,
        policy=MEASURED,
        student_loaded=True,
        catch_up_budget_s=0.1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def switch(
    ready: bool, healthy: tuple[bool, ...] = ALL, exact: bool = True, replay_s: float = 0.0
) -> SwitchView:
    return SwitchView(version="v2", healthy=healthy, ready=ready, exact=exact, replay_s=replay_s)


@pytest.mark.parametrize(
    ("name", "seen", "want"),
    [
        ("whole and level", view(), Full(version="v1")),
        ("last stage down", view(healthy=(UP, UP, DOWN)), EarlyExit(stage=1, confidence=1 / 1.1)),
        ("middle down", view(healthy=(UP, DOWN, UP)), EarlyExit(stage=0, confidence=1 / 1.25)),
        ("first down", view(healthy=(DOWN, UP, UP)), Fallback(confidence=1 / 1.4)),
        (
            "first down, no student: shed (the student would fit with time, but is missing)",
            view(healthy=(DOWN, UP, UP), student_loaded=False),
            NoPath(reason=NoPathReason.NOTHING_SERVES, detail="the student is not loaded"),
        ),
        (
            "FULL does not fit the time left: the deepest exit that does",
            view(time_left_s=0.010),
            EarlyExit(stage=0, confidence=1 / 1.25),
        ),
        ("unmeasured, whole", view(policy=None), Full(version="v1")),
        (
            "unmeasured, last down",
            view(policy=None, healthy=(UP, UP, DOWN)),
            EarlyExit(stage=1, confidence=0.0),
        ),
        (
            "unmeasured, first down",
            view(policy=None, healthy=(DOWN, UP, UP)),
            Fallback(confidence=0.0),
        ),
        (
            "unmeasured, first down, no student",
            view(policy=None, healthy=(DOWN, UP, UP), student_loaded=False),
            NoPath(
                reason=NoPathReason.NOTHING_SERVES,
                detail="stage 0 has no usable replica and the student is not loaded",
            ),
        ),
        (
            "deadline passed",
            view(time_left_s=0.0),
            NoPath(reason=NoPathReason.DEADLINE, detail="the step's deadline passed"),
        ),
    ],
)
def test_answers_by_health_time_and_quality(name: str, seen: StepView, want: Plan) -> None:
    assert plan_step(seen) == want, name


def test_nothing_fits_in_time_but_would_with_more_is_shed_with_a_retry_hint() -> None:
    plan = plan_step(view(time_left_s=0.002))  # the student's 5 ms does not fit
    assert isinstance(plan, Shed)
    assert plan.retry_after_s > 0 and "ms left" in plan.detail


def test_safety_is_served_below_every_quality_bar() -> None:
    bad = policy(
        early_exit_0=(2.0, 0.5, 8.0), early_exit_1=(2.0, 0.5, 18.0), fallback=(1.8, 0.55, 5.0)
    )
    seen = view(policy=bad, healthy=(DOWN, UP, UP))
    assert isinstance(plan_step(seen), Shed | NoPath)
    assert plan_step(dataclasses.replace(seen, priority=Priority.SAFETY)) == Fallback(
        confidence=1 / 1.8
    )


def test_a_lag_is_caught_up_within_the_budget_then_full() -> None:
    lagging = view(level=(UP, DOWN, DOWN))
    plan = plan_step(lagging)
    assert plan == CatchUp(version="v1", depth=3, budget_s=0.1)
    assert isinstance(plan, CatchUp)
    done = lagging.with_catch_up(plan, complete=True, time_left_s=0.9)
    assert plan_step(done) == Full(version="v1")


def test_a_long_lag_answers_degraded_from_the_level_stages_meanwhile() -> None:
    lagging = view(level=(UP, DOWN, DOWN))
    plan = plan_step(lagging)
    assert isinstance(plan, CatchUp)
    partial = lagging.with_catch_up(plan, complete=False, time_left_s=0.9)
    assert partial.catch_up_budget_s == 0
    assert plan_step(partial) == EarlyExit(stage=0, confidence=1 / 1.25)


def test_a_long_lag_with_no_degraded_answer_finishes_the_catch_up_within_the_step() -> None:
    lagging = view(level=(DOWN, DOWN, DOWN), student_loaded=False)
    first = plan_step(lagging)
    assert isinstance(first, CatchUp) and not first.finish
    partial = lagging.with_catch_up(first, complete=False, time_left_s=0.8)
    finish = plan_step(partial)
    assert finish == CatchUp(
        version="v1", depth=3, budget_s=0.8 * (1 - CATCH_UP_RESERVE), finish=True
    )
    assert isinstance(finish, CatchUp)
    assert plan_step(partial.with_catch_up(finish, complete=True, time_left_s=0.3)) == Full(
        version="v1"
    )
    fell_short = plan_step(partial.with_catch_up(finish, complete=False, time_left_s=0.3))
    assert fell_short == Full(version="v1", fresh=True), "a retry would fall short again"


def test_only_the_healthy_prefix_is_caught_up_when_a_later_stage_is_down() -> None:
    seen = view(healthy=(UP, UP, DOWN), level=(DOWN, DOWN, DOWN))
    plan = plan_step(seen)
    assert plan == CatchUp(version="v1", depth=2, budget_s=0.1)
    assert isinstance(plan, CatchUp)
    done = seen.with_catch_up(plan, complete=True, time_left_s=0.9)
    assert done.level == (UP, UP, DOWN)
    assert plan_step(done) == EarlyExit(stage=1, confidence=1 / 1.1)


def test_a_stage_failing_under_the_step_degrades_that_same_step() -> None:
    failed = view().with_stage_failed("v1", 2)
    assert failed.healthy == (UP, UP, DOWN)
    assert plan_step(failed) == EarlyExit(stage=1, confidence=1 / 1.1)
    assert plan_step(failed.with_stage_failed("v1", 0)) == Fallback(confidence=1 / 1.4)


def test_a_version_switch_catches_up_in_chunks_and_answers_on_the_old_version_meanwhile() -> None:
    moving = view(switch=switch(ready=False))
    plan = plan_step(moving)
    assert plan == CatchUp(version="v2", depth=3, budget_s=0.1)
    assert isinstance(plan, CatchUp)
    assert plan_step(moving.with_catch_up(plan, complete=False, time_left_s=0.9)) == Full(
        version="v1"
    )
    assert plan_step(moving.with_catch_up(plan, complete=True, time_left_s=0.9)) == Full(
        version="v2"
    )


def test_a_ready_switch_moves_at_once_and_falls_back_to_the_old_version_if_a_new_stage_fails() -> (
    None
):
    ready = view(switch=switch(ready=True))
    assert plan_step(ready) == Full(version="v2")
    assert plan_step(ready.with_stage_failed("v2", 1)) == Full(version="v1")


def test_a_switch_whose_old_version_is_gone_finishes_within_the_step() -> None:
    gone = view(healthy=(DOWN, DOWN, DOWN), student_loaded=False, switch=switch(ready=False))
    finish = plan_step(gone)
    assert isinstance(finish, CatchUp) and finish.finish and finish.version == "v2"
    fell_short = plan_step(gone.with_catch_up(finish, complete=False, time_left_s=0.1))
    assert fell_short == Full(version="v2", fresh=True)


def test_a_switch_to_a_version_not_whole_waits_on_the_old_one() -> None:
    assert plan_step(view(switch=switch(ready=False, healthy=(UP, DOWN, UP)))) == Full(version="v1")


def test_the_loop_always_ends() -> None:
    """Every fold consumes something (budget, the finishing try, a healthy stage), so planning
    and folding the worst outcome of each plan reaches an answer or a refusal."""
    seen = view(level=(DOWN, DOWN, DOWN), student_loaded=False, switch=switch(ready=False))
    for _ in range(20):
        plan = plan_step(seen)
        if isinstance(plan, CatchUp):
            seen = seen.with_catch_up(plan, complete=False, time_left_s=seen.time_left_s / 2)
        elif isinstance(plan, Full | EarlyExit):
            failed_stage = 0 if isinstance(plan, EarlyExit) else 2
            seen = seen.with_stage_failed(
                plan.version if isinstance(plan, Full) else "v1", failed_stage
            )
        else:
            break
    assert isinstance(plan, Shed | NoPath | Fallback)


def test_admission_gets_the_fastest_acceptable_latency_only_when_it_is_known() -> None:
    assert admission_latency_s(view()) == pytest.approx(0.005)
    assert admission_latency_s(view(student_loaded=False)) is None
    assert admission_latency_s(view(policy=None)) is None


def test_a_failing_student_is_not_asked_again_in_the_step() -> None:
    seen = view(healthy=(DOWN, UP, UP))
    assert plan_step(seen) == Fallback(confidence=1 / 1.4)
    assert isinstance(plan_step(seen.without_student()), NoPath)


def test_no_catch_up_without_budget_or_lag() -> None:
    assert not isinstance(plan_step(view(catch_up_budget_s=0.0)), CatchUp)
    assert math.isclose(
        plan_step(view(level=(UP, DOWN, DOWN), time_left_s=0.1)).budget_s,  # type: ignore[union-attr]
        0.05,
    )


def test_a_switch_hurries_when_the_old_version_is_no_longer_whole() -> None:
    """Its replicas are reloading onto the new version: finish now rather than degrade; if the
    finish falls short, the old version's degraded answer commits the progress."""
    going = view(healthy=(UP, UP, DOWN), switch=switch(ready=False))
    finish = plan_step(going)
    assert isinstance(finish, CatchUp) and finish.finish and finish.version == "v2"
    short = going.with_catch_up(finish, complete=False, time_left_s=0.5)
    assert plan_step(short) == EarlyExit(stage=1, confidence=1 / 1.1)
    assert plan_step(going.with_catch_up(finish, complete=True, time_left_s=0.5)) == Full(
        version="v2"
    )


def test_a_switch_the_log_cannot_replay_moves_at_once_from_fresh_states() -> None:
    """Waiting would not bring the history back: no catch-up, no degraded answer meanwhile;
    a new stage failing under the step leaves it on the old version."""
    beyond = switch(ready=False, exact=False)
    assert plan_step(view(switch=beyond)) == Full(version="v2", fresh=True)
    going = view(healthy=(DOWN, UP, UP), switch=beyond)
    assert plan_step(going) == Full(version="v2", fresh=True)
    assert plan_step(view(switch=beyond).with_stage_failed("v2", 1)) == Full(version="v1")


def test_a_switch_whose_rebuild_would_not_fit_does_not_gamble_half_the_step() -> None:
    """The old version is going: a finishing catch-up only when FINISH_MARGIN times the
    rebuild's estimate fits in half the time left, and with that budget; otherwise a budgeted
    chunk, then the old version's degraded answer. With no degraded answer at all, the move
    from fresh states at once rather than a finishing catch-up bound to fall short."""
    assert FINISH_MARGIN * 0.2 <= 0.5 < FINISH_MARGIN * 0.3  # half of view()'s 1 s left
    hurried = view(healthy=(UP, UP, DOWN), switch=switch(ready=False, replay_s=0.2))
    assert plan_step(hurried) == CatchUp(
        version="v2", depth=3, budget_s=FINISH_MARGIN * 0.2, finish=True
    )
    going = view(healthy=(UP, UP, DOWN), switch=switch(ready=False, replay_s=0.3))
    chunk = plan_step(going)
    assert chunk == CatchUp(version="v2", depth=3, budget_s=0.1)
    assert isinstance(chunk, CatchUp)
    short = going.with_catch_up(chunk, complete=False, time_left_s=0.9)
    assert plan_step(short) == EarlyExit(stage=1, confidence=1 / 1.1)
    gone = view(healthy=(DOWN, DOWN, DOWN), student_loaded=False, catch_up_budget_s=0.0)
    long = switch(ready=False, replay_s=0.6)
    assert plan_step(dataclasses.replace(gone, switch=long)) == Full(version="v2", fresh=True)
    fits = dataclasses.replace(gone, switch=switch(ready=False, replay_s=0.4))
    assert plan_step(fits) == CatchUp(version="v2", depth=3, budget_s=0.5, finish=True)
