"""The degrade policy's latency factor: the flag if given, else the version's measured one."""

from __future__ import annotations

from service.coordinator.assets import UNMEASURED_LATENCY_FACTOR, latency_factor
from service.runtime.settings import CoordinatorSettings

MEASURED = {"modes": {}, "latency_factor": 4.5}


def test_the_versions_measured_factor_by_default() -> None:
    assert latency_factor(CoordinatorSettings(), MEASURED) == 4.5


def test_the_flag_overrides_the_measured_factor() -> None:
    assert latency_factor(CoordinatorSettings(policy_latency_factor=2.0), MEASURED) == 2.0


def test_a_table_without_a_measured_factor_uses_the_guess() -> None:
    assert latency_factor(CoordinatorSettings(), {"modes": {}}) == UNMEASURED_LATENCY_FACTOR
    assert latency_factor(CoordinatorSettings(), {"latency_factor": None}) == 3.0


def test_a_measured_factor_below_one_counts_as_one() -> None:
    assert latency_factor(CoordinatorSettings(), {"latency_factor": 0.7}) == 1.0
