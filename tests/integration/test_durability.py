"""Redis dies under a running cluster: with AOF, WAIT or Sentinel no acknowledged step is lost.

Every test ends with chaos.invariants's check: the acknowledged seqs are 1..n with no gap or
repeat, Redis holds seq n, and the actions equal the in-process model's (nothing lost or
applied twice).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from chaos.invariants import failed, failure_report, progress, robots_stepping
from service.local.embedded_redis import EmbeddedRedis
from service.local.embedded_sentinel import EmbeddedSentinels
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.waiting import wait_for


def test_aof_always_keeps_every_acknowledged_step_across_a_redis_kill(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, redis_durability="always")
    with LocalCluster(settings, model=SMALL_MODEL) as cluster, robots_stepping(cluster) as robots:
        assert cluster.redis is not None
        progress(robots, 20)
        cluster.redis.kill()
        cluster.redis.restart()
        progress(robots, 20)
        print(
            f"redis kill -9 + restart with AOF always: {len(failed(robots))} steps failed and were retried"
        )


def test_wait_replicas_steps_are_acknowledged_only_once_replicated(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, redis_replicas=1)
    with (
        LocalCluster(settings, model=SMALL_MODEL) as cluster,
        robots_stepping(cluster, wait_replicas=1) as robots,
    ):
        progress(robots, 10)
        assert failed(robots) == [], failure_report(robots, cluster.log_dir)
        replica = cluster.redis_replicas[0]
        replica.kill()  # no replica acknowledges: steps must not be acknowledged
        wait_for(lambda: len(failed(robots)) >= 4, 15, "steps refused without a replica")
        with grpc.insecure_channel(cluster.address) as channel, pytest.raises(grpc.RpcError) as no:
            session_pb2_grpc.SessionServiceStub(channel).OpenSession(
                session_pb2.OpenSessionRequest(wait_replicas=1), timeout=10
            )
        # not even opened unreplicated: refused before anything is created, saying why
        assert no.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "0 replicas connected" in (no.value.details() or "")
        acked = [r.acked for r in robots]
        replica.restart()
        progress(robots, 10)
        assert all(r.acked > a for r, a in zip(robots, acked, strict=True))


def test_coordinators_follow_a_sentinel_promotion(tmp_path: Path) -> None:
    primary = EmbeddedRedis(tmp_path / "primary")
    replica = EmbeddedRedis(tmp_path / "replica", replica_of=primary)
    standby = EmbeddedRedis(tmp_path / "standby", replica_of=replica)  # WAIT 1 after the switch
    with (
        primary,
        replica,
        standby,
        EmbeddedSentinels(3, tmp_path / "sentinels", primary.port) as sentinels,
    ):
        sentinels.wait_converged(replicas=1, timeout_s=15.0)
        settings = cluster_settings(tmp_path / "cluster", redis_url=sentinels.url)
        with (
            LocalCluster(settings, model=SMALL_MODEL) as cluster,
            robots_stepping(cluster, wait_replicas=1) as robots,
        ):
            progress(robots, 20)
            primary.kill()
            wait_for(
                lambda: sentinels.primary_address() == ("127.0.0.1", replica.port),
                20,
                "the replica promoted",
            )
            progress(robots, 20)
            print(f"sentinel switch: {len(failed(robots))} steps failed and were retried")
