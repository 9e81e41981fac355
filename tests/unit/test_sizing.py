"""The fleet sizing formula (service/bench/sizing.py) on figures chosen by hand."""

from __future__ import annotations

from service.bench.sizing import REDIS_NODE_BYTES, TARGET_UTILISATION, fleet_size

FIGURES: dict[str, object] = {
    "coordinator_cpu_us_per_step": 100.0,
    "shard_cpu_us_per_step": [200.0, 300.0],
    "redis_cpu_us_per_step": 50.0,
    "redis_bytes_per_session": 20_000,
}


def test_each_part_gets_the_cores_its_cpu_per_step_needs_plus_a_spare() -> None:
    assert TARGET_UTILISATION == 0.5  # the arithmetic below assumes it
    size = fleet_size(FIGURES, robots=1000, rate_hz=50.0)  # 50,000 steps/s
    # 50,000 * 100 us = 5 core-s/s at 50% -> 10 coordinators, +1 spare
    # 50,000 * 300 us (the slowest stage) = 15 core-s/s -> 30 shards, +1 standby
    # 50,000 * 50 us = 2.5 core-s/s -> 5 Redis primaries (memory needs 1)
    assert size == {
        "coordinators": 11,
        "shards_per_stage": 31,
        "redis_primaries": 5,
        "steps_per_s": 50_000,
    }


def test_redis_primaries_follow_memory_when_it_binds() -> None:
    figures = {**FIGURES, "redis_cpu_us_per_step": 1.0}
    robots = 1_000_000
    size = fleet_size(figures, robots=robots, rate_hz=1.0)  # 1e6 steps/s * 1 us -> 2 primaries
    by_memory = -(-robots * 20_000 // REDIS_NODE_BYTES)
    assert by_memory == 5 and size["redis_primaries"] == 5


def test_a_small_fleet_still_has_one_of_each_and_its_spares() -> None:
    size = fleet_size(FIGURES, robots=1, rate_hz=1.0)
    assert size == {
        "coordinators": 2,
        "shards_per_stage": 2,
        "redis_primaries": 1,
        "steps_per_s": 1,
    }
