"""The chaos suite's fault schedule is a pure function of (scenario, duration, seed)."""

from __future__ import annotations

import pytest

from chaos.schedule import (
    FAULTS,
    HOLD_S,
    MIXED,
    MIXED_FAULTS,
    PARTITIONS,
    scenario_names,
    schedule,
)


@pytest.mark.parametrize("name", scenario_names())
def test_the_same_seed_gives_the_same_schedule(name: str) -> None:
    assert schedule(name, 60, seed=7) == schedule(name, 60, seed=7)


def test_another_seed_gives_another_mixed_schedule() -> None:
    runs = {tuple(schedule(MIXED, 120, seed=s, every_s=10)) for s in range(5)}
    assert len(runs) == 5


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_single_fault_scenario_injects_its_fault_once_after_the_robots_settle(name: str) -> None:
    for seed in range(20):
        [event] = schedule(name, 60, seed)
        assert event.fault == name
        assert 15 <= event.at_s <= 24
        low, high = HOLD_S[name]
        assert low <= event.hold_s <= high


def test_mixed_draws_one_fault_every_period_from_all_faults_but_the_partitions() -> None:
    events = schedule(MIXED, 100, seed=3, every_s=10)
    assert [e.at_s for e in events] == [10, 20, 30, 40, 50, 60, 70]
    assert {e.fault for e in events} <= set(FAULTS)
    drawn = {e.fault for s in range(30) for e in schedule(MIXED, 100, seed=s, every_s=10)}
    assert drawn == set(MIXED_FAULTS) == set(FAULTS) - set(PARTITIONS)


def test_an_unknown_scenario_or_a_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        schedule("nope", 60, 0)
    with pytest.raises(ValueError, match="positive"):
        schedule("kill-leader", 0, 0)
