"""The session store on a real Redis Cluster (`redis+cluster://`, 3 primaries from the embedded
redis-server): every session's keys on one slot, sessions spread over the primaries, WAIT counted
on the session's own primary, a primary's failover ridden through (WAIT too), AOF keeping a
crashed primary's steps, and a whole local cluster (shards, coordinator) stepping sessions
through it with the in-process model's answers. The store contract itself runs on a Cluster
too (test_store_contract.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
import torch

from chaos.reference import observations, open_session, reference_run, step
from service.local.embedded_redis_cluster import EmbeddedRedisCluster
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec, tensor_pb2
from state.redis_store import CLUSTER_RETRY, RedisSessionStore
from state.redis_url import read_secret
from state.session import CommitStatus, SessionId, StageIndex, StepCommit
from state.store import NotReplicated
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.session_records import fresh_record, logged, stages_at

pytestmark = pytest.mark.timeout(240)

SOCKET_TIMEOUT_S = 1.0
SESSIONS = 30  # fixed ids: their slots land on every one of 3 primaries
STEPS = 20
ATOL = 1e-5
FAILOVER_NODE_TIMEOUT_MS = 1000  # a primary is failed after this; the vote follows


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """3 primaries with one replica each."""
    base = tmp_path_factory.mktemp("redis-cluster")
    with EmbeddedRedisCluster(base, primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def store(replicated: EmbeddedRedisCluster) -> Iterator[RedisSessionStore]:
    opened = RedisSessionStore(replicated.url, socket_timeout_s=SOCKET_TIMEOUT_S)
    yield opened
    opened.close()


def holder(cluster: EmbeddedRedisCluster, key: str) -> int:
    """The port of the primary that holds key (asked of the servers, not of our client)."""
    for node in cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
            try:
                if client.info("replication")["role"] != "master":
                    continue
            except redis.ConnectionError:  # a node killed by the test
                continue
            slot = client.cluster("KEYSLOT", key)
            if client.cluster("COUNTKEYSINSLOT", slot) > 0:
                return node.port
    raise AssertionError(f"no primary holds {key}")


def test_a_sessions_keys_share_one_slot_and_sessions_spread_over_every_primary(
    replicated: EmbeddedRedisCluster, store: RedisSessionStore
) -> None:
    holders = set()
    with redis.Redis(host="127.0.0.1", port=replicated.nodes[0].port) as any_node:
        for i in range(SESSIONS):
            sid = SessionId(f"spread-{i}")
            store.create(fresh_record(sid))
            logged(store, sid, steps=3, limit=8)  # the commit script writes both keys
            keys = [f"am:{{{sid}}}:session", f"am:{{{sid}}}:obslog"]
            slots = {any_node.cluster("KEYSLOT", key) for key in keys}
            assert len(slots) == 1, f"session={sid}: keys on slots {slots}"
            assert holder(replicated, keys[0]) == holder(replicated, keys[1])
            holders.add(holder(replicated, keys[0]))
    assert holders == {node.port for node in replicated.primary_nodes}


def test_wait_counts_the_replicas_of_the_sessions_own_primary(store: RedisSessionStore) -> None:
    assert store.replicas() == 1
    for i in range(SESSIONS):  # sessions on every primary
        sid = SessionId(f"wait-{i}")
        store.create(fresh_record(sid))
        once = StepCommit(0, 1, stages_at(1), b"r1", 10.0, 3, wait_replicas=1, wait_timeout_s=0.4)
        assert store.commit(sid, once).status is CommitStatus.COMMITTED
        store.confirm_replicated(sid, 1, 0.4)
        twice = StepCommit(1, 2, stages_at(2), b"r2", 10.0, 3, wait_replicas=2, wait_timeout_s=0.05)
        with pytest.raises(NotReplicated, match="acknowledged by 1 of 2"):
            store.commit(sid, twice)


def test_a_commit_rides_through_the_failover_of_its_primary(
    tmp_path: Path,
) -> None:
    with EmbeddedRedisCluster(
        tmp_path / "rc", primaries=3, replicas=1, node_timeout_ms=FAILOVER_NODE_TIMEOUT_MS
    ) as cluster:
        store = RedisSessionStore(cluster.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = SessionId("failover-0")
        store.create(fresh_record(sid))
        first = StepCommit(0, 1, stages_at(1), b"r1", 30.0, 3, wait_replicas=1, wait_timeout_s=0.4)
        assert store.commit(sid, first).status is CommitStatus.COMMITTED
        primary = holder(cluster, f"am:{{{sid}}}:session")
        next(node for node in cluster.nodes if node.port == primary).kill()
        started = time.monotonic()
        outcome = store.commit(sid, StepCommit(1, 2, stages_at(2), b"r2", 30.0, 3))
        took = time.monotonic() - started
        assert outcome.status is CommitStatus.COMMITTED, "the step acknowledged by WAIT survived"
        assert took < CLUSTER_RETRY.budget_s
        record = store.load(sid)
        assert record is not None and (record.seq, record.last_reply) == (2, b"r2")
        assert holder(cluster, f"am:{{{sid}}}:session") != primary, "a replica was promoted"
        store.close()


def test_a_replicated_commit_after_a_failover_reaches_the_new_primary(tmp_path: Path) -> None:
    """WAIT runs on a direct connection to the session's primary: after that primary fails, the
    commit must find the promoted one, which has no replica left, so: committed, NotReplicated."""
    with EmbeddedRedisCluster(
        tmp_path / "rc", primaries=3, replicas=1, node_timeout_ms=FAILOVER_NODE_TIMEOUT_MS
    ) as cluster:
        store = RedisSessionStore(cluster.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = SessionId("failover-wait-0")
        store.create(fresh_record(sid))
        first = StepCommit(0, 1, stages_at(1), b"r1", 30.0, 3, wait_replicas=1, wait_timeout_s=0.4)
        assert store.commit(sid, first).status is CommitStatus.COMMITTED
        primary = holder(cluster, f"am:{{{sid}}}:session")
        next(node for node in cluster.nodes if node.port == primary).kill()
        second = StepCommit(1, 2, stages_at(2), b"r2", 30.0, 3, wait_replicas=1, wait_timeout_s=0.4)
        with pytest.raises(NotReplicated, match="acknowledged by 0 of 1"):
            store.commit(sid, second)
        record = store.load(sid)
        assert record is not None and (record.seq, record.last_reply) == (2, b"r2")
        store.close()


def test_with_aof_always_a_committed_step_survives_its_primarys_crash(tmp_path: Path) -> None:
    with EmbeddedRedisCluster(tmp_path / "rc", primaries=3, appendfsync="always") as cluster:
        store = RedisSessionStore(cluster.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = SessionId("aof-0")
        store.create(fresh_record(sid, ttl_s=60.0))
        logged(store, sid, steps=5, limit=8)
        primary = holder(cluster, f"am:{{{sid}}}:session")
        node = next(node for node in cluster.nodes if node.port == primary)
        node.kill()  # SIGKILL: no shutdown save; only the AOF has the steps
        node.restart()
        cluster.wait_ok()
        record = store.load(sid)
        assert record is not None and record.seq == 5
        assert store.observations(sid, 1, 5) == [f"obs{seq}".encode() for seq in range(1, 6)]
        store.close()


def test_a_local_cluster_steps_through_a_redis_cluster(
    tmp_path: Path, replicated: EmbeddedRedisCluster
) -> None:
    settings = cluster_settings(tmp_path / "local", redis_url=replicated.url)
    with (
        LocalCluster(settings, model=SMALL_MODEL) as local,
        grpc.insecure_channel(local.address) as channel,
    ):
        stub = session_pb2_grpc.SessionServiceStub(channel)
        sessions = [open_session(stub) for _ in range(3)]
        obs = {
            sid: observations(i, STEPS, SMALL_MODEL.observation_dim)
            for i, sid in enumerate(sessions)
        }
        actions: dict[str, list[torch.Tensor]] = {sid: [] for sid in sessions}
        for seq in range(1, STEPS + 1):
            for sid in sessions:
                reply = step(stub, sid, seq, obs[sid][seq - 1])
                assert (reply.seq, reply.serve_mode) == (seq, session_pb2.SERVE_MODE_FULL)
                actions[sid].append(tensor_codec.decode(reply.action))
        model, _ = weights.load_model(local.weights_dir)
        store = RedisSessionStore(replicated.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        for sid in sessions:
            want_actions, want_states = reference_run(model, obs[sid])
            for got, want in zip(actions[sid], want_actions, strict=True):
                assert torch.allclose(got, want, atol=ATOL), f"session={sid} differs"
            record = store.load(SessionId(sid))
            assert record is not None and record.seq == STEPS
            for k, want in enumerate(want_states):
                data = record.stage_states[StageIndex(k)].data
                got = tensor_codec.decode(tensor_pb2.Tensor.FromString(data))
                assert torch.allclose(got, want, atol=ATOL), f"session={sid} stage {k} differs"
        store.close()


def test_up_starts_a_private_redis_cluster_with_the_durability_asked_for(tmp_path: Path) -> None:
    settings = cluster_settings(
        tmp_path, redis_cluster_primaries=3, redis_replicas=1, redis_durability="always"
    )
    with (
        LocalCluster(settings, model=SMALL_MODEL) as local,
        grpc.insecure_channel(local.address) as channel,
    ):
        assert local.redis_cluster is not None and local.redis_url.startswith("redis+cluster://")
        for node in local.redis_cluster.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
                assert client.config_get("appendfsync") == {"appendfsync": "always"}
        stub = session_pb2_grpc.SessionServiceStub(channel)
        opened = stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id="test", wait_replicas=1), timeout=10
        )
        obs = observations(0, 5, SMALL_MODEL.observation_dim)
        for seq in range(1, 6):
            reply = step(stub, opened.session_id, seq, obs[seq - 1])
            assert (reply.seq, reply.serve_mode) == (seq, session_pb2.SERVE_MODE_FULL)
        with pytest.raises(grpc.RpcError) as refused:
            stub.OpenSession(
                session_pb2.OpenSessionRequest(client_id="test", wait_replicas=2), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_up_tls_gives_its_private_redis_cluster_a_password_the_coordinator_sends(
    tmp_path: Path,
) -> None:
    """Like the single Redis of `up --tls`: every node wants AUTH (replicas give it to their
    primary: a step that waits for one replica is acknowledged), and the coordinator reads the
    password from the file up wrote."""
    settings = cluster_settings(tmp_path, tls=True, redis_cluster_primaries=3, redis_replicas=1)
    with LocalCluster(settings, model=SMALL_MODEL) as local, local.channel("robot-a") as channel:
        assert local.redis_cluster is not None and local.redis_password_file is not None
        password = read_secret(local.redis_password_file)
        assert password not in local.redis_url
        for node in local.redis_cluster.nodes:
            with (
                redis.Redis(host="127.0.0.1", port=node.port) as stranger,
                pytest.raises(redis.AuthenticationError),
            ):
                stranger.ping()
            with redis.Redis(host="127.0.0.1", port=node.port, password=password) as client:
                assert client.ping()
        stub = session_pb2_grpc.SessionServiceStub(channel)
        opened = stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id="test", wait_replicas=1), timeout=10
        )
        obs = observations(0, 3, SMALL_MODEL.observation_dim)
        for seq in range(1, 4):
            reply = step(stub, opened.session_id, seq, obs[seq - 1])
            assert (reply.seq, reply.serve_mode) == (seq, session_pb2.SERVE_MODE_FULL)
