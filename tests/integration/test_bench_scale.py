"""`actionmesh bench --scale`: how it counts Redis round trips (against a real redis-server),
and the JSON keys it prints (figures are not asserted: noisy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.bench.fleet_cost import monitored
from service.local.embedded_redis import EmbeddedRedis
from tests.integration.test_bench import bench

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


def test_a_script_and_a_transaction_are_one_round_trip_each(server: EmbeddedRedis) -> None:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    script = client.register_script(
        "for i = 1, 5 do redis.call('HSET', KEYS[1], 'f' .. i, i) end return 1"
    )
    script(["h"], [])  # loaded before counting: EVALSHA alone below
    with monitored([server.port]) as requests:
        script(["h"], [])
        with client.pipeline(transaction=True) as pipe:
            pipe.set("a", 1).incr("a").get("a")
            pipe.execute()
        client.get("a")
        client.hgetall("h")
    client.close()
    assert dict(requests.by_command) == {"evalsha": 1, "multi": 1, "get": 1, "hgetall": 1}
    assert requests.total == 4


@pytest.mark.parametrize("cluster_primaries", [0, 3])
def test_bench_scale_json_keys(tmp_path: Path, cluster_primaries: int) -> None:
    out = bench(
        tmp_path,
        "--scale",
        "--steps",
        "20",
        "--scale-robots",
        "2",
        "--scale-idle-sessions",
        "200",
        "--redis-cluster-primaries",
        str(cluster_primaries),
    )
    assert out["redis_primaries"] == max(1, cluster_primaries)
    assert out["steps"] == 40 and out["idle_sessions"] == 200
    assert out["redis_round_trips_per_step"] >= 1  # every step commits
    assert "evalsha" in out["redis_requests_per_step_by_command"]
    assert out["redis_bytes_per_session"] > 0
    assert out["coordinator_cpu_us_per_step"] > 0
    assert len(out["shard_cpu_us_per_step"]) == out["stages"]
    assert out["idle_sessions_redis_bytes"] > 0
    assert "idle_sessions_coordinator_rss_bytes" in out
    assert [row["robots"] for row in out["sizing"]] == [100, 1000, 10_000]
