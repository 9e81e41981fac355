"""How many coordinators, shards and Redis primaries a fleet needs, from the per-step figures
`actionmesh bench --scale` measures (docs/sizing.md explains the formula and its limits)."""

from __future__ import annotations

import math
from typing import cast

TARGET_UTILISATION = 0.5  # of a core: headroom for bursts, batching gaps and one failover
REDIS_NODE_BYTES = 4 * 2**30  # sessions per Redis primary: 4 GiB, room for fork and AOF
SIZING_EXAMPLES = ((100, 50.0), (1000, 50.0), (10_000, 20.0))


def fleet_size(figures: dict[str, object], robots: int, rate_hz: float) -> dict[str, int]:
    """Coordinators, shards per stage and Redis primaries for `robots` robots at `rate_hz`,
    each process (one core each) kept at TARGET_UTILISATION; Redis primaries also by memory,
    REDIS_NODE_BYTES of sessions each. `figures`: bench --scale's JSON."""
    steps_per_s = robots * rate_hz
    budget_us = 1e6 * TARGET_UTILISATION  # CPU microseconds one core gives a part per second

    def cores(us_per_step: float) -> int:
        return max(1, math.ceil(steps_per_s * us_per_step / budget_us))

    coordinator_us = float(cast("float", figures["coordinator_cpu_us_per_step"]))
    shard_us = cast("list[float]", figures["shard_cpu_us_per_step"])
    redis_us = float(cast("float", figures["redis_cpu_us_per_step"]))
    session_bytes = int(cast("int", figures["redis_bytes_per_session"]))
    redis_by_memory = math.ceil(robots * session_bytes / REDIS_NODE_BYTES)
    return {
        "coordinators": cores(coordinator_us) + 1,  # +1: one may fail without overload
        "shards_per_stage": max(cores(us) for us in shard_us) + 1,  # +1: a hot standby
        "redis_primaries": max(cores(redis_us), redis_by_memory, 1),
        "steps_per_s": round(steps_per_s),
    }
