"""The degrade policy as a pure function: table-driven over health, time budget and quality."""

from __future__ import annotations

import dataclasses

import pytest

from fallback.policy import (
    Decision,
    PolicyConfig,
    Reason,
    StepConditions,
    best_latency_s,
    decide,
)
from fallback.priority import Priority
from fallback.quality import ModeQuality, QualityTable, quality_confidence
from fallback.serve_mode import ServeMode
from tests.support.quality_tables import GOOD, table_json

# Three stages. FULL is best and slowest; deeper exits are better and slower; the student
# is the fastest. Errors are relative to FULL's 1.0, so ratios read straight off.
BAD_EXIT_1 = {**GOOD, "early_exit_1": (1.5, 0.70, 18.0)}  # above the 1.3 bar
BAD_EXITS = {**BAD_EXIT_1, "early_exit_0": (2.0, 0.50, 8.0)}
BAD_FALLBACK = {**GOOD, "fallback": (2.0, 0.50, 5.0)}  # above the 1.5 bar
ALL_BAD = {**BAD_EXITS, "fallback": (1.8, 0.55, 5.0)}  # better than exit 0, worse than exit 1

UP, DOWN = True, False
ALL_UP = (UP, UP, UP)
LAST_DOWN = (UP, UP, DOWN)
MIDDLE_DOWN = (UP, DOWN, UP)
FIRST_DOWN = (DOWN, UP, UP)


def config(modes: dict[str, tuple[float, float, float]] = GOOD) -> PolicyConfig:
    return PolicyConfig.from_quality_table(table_json(modes))


def run(
    health: tuple[bool, ...],
    budget_ms: float,
    modes: dict[str, tuple[float, float, float]] = GOOD,
    priority: Priority = Priority.NORMAL,
    confidence: dict[str, float] | None = None,
) -> Decision:
    conditions = StepConditions(health, budget_ms / 1000, priority, confidence or {})
    return decide(conditions, config(modes))


FULL = (ServeMode.FULL, None)
EXIT_0 = (ServeMode.EARLY_EXIT, 0)
EXIT_1 = (ServeMode.EARLY_EXIT, 1)
FALLBACK = (ServeMode.FALLBACK, None)
SHED = (None, None)


@pytest.mark.parametrize(
    ("health", "budget_ms", "modes", "expected", "reason"),
    [
        (ALL_UP, 100, GOOD, FULL, Reason.HEALTHY),
        (ALL_UP, 30, GOOD, FULL, Reason.HEALTHY),  # exactly fits
        (LAST_DOWN, 100, GOOD, EXIT_1, Reason.STAGE_DOWN),
        (LAST_DOWN, 100, BAD_EXIT_1, EXIT_0, Reason.STAGE_DOWN),
        (LAST_DOWN, 100, BAD_EXITS, FALLBACK, Reason.STAGE_DOWN),
        (MIDDLE_DOWN, 100, GOOD, EXIT_0, Reason.STAGE_DOWN),
        (MIDDLE_DOWN, 100, BAD_EXITS, FALLBACK, Reason.STAGE_DOWN),
        (FIRST_DOWN, 100, GOOD, FALLBACK, Reason.STAGE_DOWN),
        ((DOWN, DOWN, DOWN), 100, GOOD, FALLBACK, Reason.STAGE_DOWN),
        # budget too small for FULL: the deepest exit that fits, then the student
        (ALL_UP, 20, GOOD, EXIT_1, Reason.OVER_BUDGET),
        (ALL_UP, 10, GOOD, EXIT_0, Reason.OVER_BUDGET),
        (ALL_UP, 6, GOOD, FALLBACK, Reason.OVER_BUDGET),
        (LAST_DOWN, 10, GOOD, EXIT_0, Reason.STAGE_DOWN),
        # nothing fits, or nothing good enough can serve
        (ALL_UP, 4, GOOD, SHED, Reason.NOTHING_FITS),
        (ALL_UP, -1, GOOD, SHED, Reason.NOTHING_FITS),
        (FIRST_DOWN, 100, BAD_FALLBACK, SHED, Reason.NOTHING_FITS),
        (LAST_DOWN, 100, ALL_BAD, SHED, Reason.NOTHING_FITS),
    ],
)
def test_normal_priority(
    health: tuple[bool, ...],
    budget_ms: float,
    modes: dict[str, tuple[float, float, float]],
    expected: tuple[ServeMode | None, int | None],
    reason: Reason,
) -> None:
    decision = run(health, budget_ms, modes)
    assert (decision.mode, decision.exit_stage) == expected
    assert decision.reason is reason


@pytest.mark.parametrize(
    ("health", "budget_ms", "modes", "expected", "reason"),
    [
        # what NORMAL would get, SAFETY gets too
        (ALL_UP, 100, GOOD, FULL, Reason.HEALTHY),
        (LAST_DOWN, 100, GOOD, EXIT_1, Reason.STAGE_DOWN),
        # below every bar: labelled degraded beats no answer
        (FIRST_DOWN, 100, BAD_FALLBACK, FALLBACK, Reason.SAFETY_OVERRIDE),
        (
            MIDDLE_DOWN,
            100,
            {**BAD_FALLBACK, "early_exit_0": (2.5, 0.4, 8.0)},
            FALLBACK,
            Reason.SAFETY_OVERRIDE,
        ),
        # ... the lowest-error mode that can serve, which need not be the student
        (LAST_DOWN, 100, ALL_BAD, EXIT_1, Reason.SAFETY_OVERRIDE),
        (LAST_DOWN, 10, ALL_BAD, FALLBACK, Reason.SAFETY_OVERRIDE),  # exit 1 too slow
        # but only if it fits at all
        (FIRST_DOWN, 4, BAD_FALLBACK, SHED, Reason.NOTHING_FITS),
        (ALL_UP, 4, GOOD, SHED, Reason.NOTHING_FITS),
    ],
)
def test_safety_is_served_whenever_something_fits(
    health: tuple[bool, ...],
    budget_ms: float,
    modes: dict[str, tuple[float, float, float]],
    expected: tuple[ServeMode | None, int | None],
    reason: Reason,
) -> None:
    decision = run(health, budget_ms, modes, Priority.SAFETY)
    assert (decision.mode, decision.exit_stage) == expected
    assert decision.reason is reason


@pytest.mark.parametrize(
    ("health", "budget_ms", "confidence", "expected", "reason", "reported"),
    [
        # a doubtful exit head gives way to the next qualifying mode without doubt
        (LAST_DOWN, 100, {"early_exit_1": 0.2}, EXIT_0, Reason.LOW_CONFIDENCE, 1 / 1.25),
        (
            LAST_DOWN,
            100,
            {"early_exit_1": 0.2, "early_exit_0": 0.3},
            FALLBACK,
            Reason.LOW_CONFIDENCE,
            1 / 1.4,
        ),
        (LAST_DOWN, 100, {"early_exit_1": 0.9}, EXIT_1, Reason.STAGE_DOWN, 0.9),
        (LAST_DOWN, 100, {"early_exit_1": 0.5}, EXIT_1, Reason.STAGE_DOWN, 0.5),  # floor is ok
        # ... but only to a mode that can still serve in time
        (MIDDLE_DOWN, 10, {"early_exit_0": 0.2}, FALLBACK, Reason.LOW_CONFIDENCE, 1 / 1.4),
        (MIDDLE_DOWN, 4, {"early_exit_0": 0.2}, SHED, Reason.NOTHING_FITS, 0.0),
        # all doubtful: the preferred mode serves, its low confidence reported
        (
            LAST_DOWN,
            100,
            {"early_exit_1": 0.2, "early_exit_0": 0.3, "fallback": 0.1},
            EXIT_1,
            Reason.STAGE_DOWN,
            0.2,
        ),
        # FULL is the reference: it never gives way
        (ALL_UP, 100, {"full": 0.1}, FULL, Reason.HEALTHY, 0.1),
        (ALL_UP, 100, {}, FULL, Reason.HEALTHY, 1.0),
    ],
)
def test_runtime_confidence(
    health: tuple[bool, ...],
    budget_ms: float,
    confidence: dict[str, float],
    expected: tuple[ServeMode | None, int | None],
    reason: Reason,
    reported: float,
) -> None:
    decision = run(health, budget_ms, confidence=confidence)
    assert (decision.mode, decision.exit_stage) == expected
    assert decision.reason is reason
    assert decision.confidence == pytest.approx(reported)


def test_a_degraded_decision_says_what_was_passed_over() -> None:
    decision = run(LAST_DOWN, 10, BAD_EXIT_1)
    assert (decision.mode, decision.exit_stage) == EXIT_0
    assert decision.detail == "full: stage 2 down; early_exit_1: 18.0 ms > 10.0 ms left"
    shed = run(ALL_UP, 4)
    assert "fallback: 5.0 ms > 4.0 ms left" in shed.detail


def test_thresholds_are_configurable() -> None:
    strict = dataclasses.replace(config(), early_exit_max_error_ratio=1.05)
    decision = decide(StepConditions(LAST_DOWN, 0.1), strict)
    assert decision.mode is ServeMode.FALLBACK  # both exits now fail the bar
    slow = dataclasses.replace(config(), latency_factor=2.0)  # FULL now needs 60 ms
    assert decide(StepConditions(ALL_UP, 0.05), slow).exit_stage == 1
    doubting = dataclasses.replace(config(), min_confidence=0.95)
    conditions = StepConditions(LAST_DOWN, 0.1, confidence={"early_exit_1": 0.9})
    assert decide(conditions, doubting).reason is Reason.LOW_CONFIDENCE


@pytest.mark.parametrize(
    ("health", "modes", "priority", "expected_s"),
    [
        (ALL_UP, GOOD, Priority.NORMAL, 0.005),
        (FIRST_DOWN, GOOD, Priority.NORMAL, 0.005),
        (ALL_UP, BAD_FALLBACK, Priority.NORMAL, 0.008),
        (LAST_DOWN, ALL_BAD, Priority.NORMAL, None),
        (LAST_DOWN, ALL_BAD, Priority.SAFETY, 0.005),
    ],
)
def test_best_latency_for_admission(
    health: tuple[bool, ...],
    modes: dict[str, tuple[float, float, float]],
    priority: Priority,
    expected_s: float | None,
) -> None:
    assert best_latency_s(config(modes), health, priority) == pytest.approx(expected_s)


def test_health_must_cover_every_stage() -> None:
    with pytest.raises(ValueError, match="health for 2 stages"):
        decide(StepConditions((UP, UP), 0.1), config())


def test_config_from_quality_table() -> None:
    cfg = config()
    assert cfg.quality.n_stages == 3
    assert cfg.quality.early_exits[1] == ModeQuality(1.1, 0.85, 18.0)
    assert cfg.quality.fallback.p50_ms == 5.0
    assert (cfg.early_exit_max_error_ratio, cfg.fallback_max_error_ratio) == (1.3, 1.5)
    two_stage = {k: v for k, v in GOOD.items() if k != "early_exit_1"}
    assert config(two_stage).quality.n_stages == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"full": GOOD["full"]}, "lacks modes"),
        (  # a gap: no exit head for stage 1
            {
                **{k: v for k, v in GOOD.items() if k != "early_exit_1"},
                "early_exit_2": GOOD["full"],
            },
            "early exits must be",
        ),
        ({k: v for k, v in GOOD.items() if k != "early_exit_0"}, "early exits must be"),
        ({**GOOD, "turbo": (1.0, 0.9, 1.0)}, "unknown modes"),
        ({**GOOD, "full": (-1.0, 0.9, 30.0)}, "error must be"),
        ({**GOOD, "full": (1.0, 1.5, 30.0)}, "success is a rate"),
        ({**GOOD, "full": (1.0, 0.9, float("nan"))}, "p50_ms must be"),
    ],
)
def test_bad_quality_tables_are_refused(
    data: dict[str, tuple[float, float, float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        QualityTable.from_dict(table_json(data))


def test_bad_table_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="quality table is"):
        QualityTable.from_dict({"full": {}})
    assert QualityTable.from_dict({**table_json(GOOD), "seed": 7}) == QualityTable.from_dict(
        table_json(GOOD)
    ), "metadata beside the modes is ignored"
    modes = table_json(GOOD)["modes"]
    with pytest.raises(ValueError, match="exactly error, success, p50_ms"):
        QualityTable.from_dict({"modes": {**modes, "full": {"error": 1.0, "success": 0.9}}})


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="ratios"):
        dataclasses.replace(config(), fallback_max_error_ratio=0.9)
    with pytest.raises(ValueError, match="min_confidence"):
        dataclasses.replace(config(), min_confidence=1.5)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("full", 1.0),
        ("early_exit_1", 1 / 1.1),
        ("fallback", 1 / 1.4),
        ("state_lost", 1 / 3.0),
    ],
)
def test_confidence_from_measured_error(mode: str, expected: float) -> None:
    assert config().quality.confidence(mode) == pytest.approx(expected)


def test_confidence_is_clipped_to_one_and_survives_zero_errors() -> None:
    full = ModeQuality(1.0, 0.9, 30.0)
    assert quality_confidence(ModeQuality(0.5, 0.9, 5.0), full) == 1.0
    assert quality_confidence(ModeQuality(2.0, 0.5, 5.0), full) == 0.5
    perfect = ModeQuality(0.0, 1.0, 30.0)
    assert quality_confidence(perfect, perfect) == 1.0
    assert quality_confidence(ModeQuality(0.1, 0.9, 5.0), perfect) == 0.0
