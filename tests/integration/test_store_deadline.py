"""A step whose Redis stops answering (redis-server SIGSTOPped: its connections stay up, calls
hang) is answered UNAVAILABLE (reason store_unavailable) before the robot's deadline, its
coordinator worker freed, and the client library leaves that coordinator after that one
attempt; once Redis answers again the step is neither lost nor doubled. A real cluster
(coordinator, shards, redis-server, etcd) over gRPC on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from chaos.reference import observations, open_session, reference_run, step, step_request
from service.client import ActionMeshClient, ServiceUnavailable
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_step_contract import error_info

pytestmark = pytest.mark.timeout(240)

BUDGET_S = 0.5  # the client library's default step deadline
# Generous (a loaded 2-core machine): a worker held until the store's socket timeout
# (redis_timeout_s, 1 s) and its retries would take seconds.
MARGIN_S = 0.4
GRPC_WORKERS = 2  # fewer than the steps sent while Redis hangs: a held worker would show


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    work_dir: Path = tmp_path_factory.mktemp("cluster")
    with LocalCluster(
        cluster_settings(work_dir),
        model=SMALL_MODEL,
        coordinator_overrides={"grpc_workers": GRPC_WORKERS},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


@contextmanager
def redis_hung(cluster: LocalCluster) -> Iterator[None]:
    assert cluster.redis is not None
    os.kill(cluster.redis.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(cluster.redis.pid, signal.SIGCONT)


def one_attempt(
    stub: session_pb2_grpc.SessionServiceStub, request: session_pb2.StepRequest
) -> tuple[grpc.StatusCode, str, float]:
    """The status code, reason and wall time of one Step call with the robot's deadline."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Step(request, timeout=BUDGET_S)
    elapsed = time.monotonic() - started
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    reason = error_info(status).reason if status is not None else ""
    return caught.value.code(), reason, elapsed


def test_a_hung_redis_is_answered_unavailable_in_time_and_the_step_is_not_lost_or_doubled(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    model, _ = weights.load_model(cluster.weights_dir)
    obs = observations(11, 3, cluster.model.observation_dim)
    robots = [open_session(stub) for _ in range(2 * GRPC_WORKERS)]
    for sid in robots:
        step(stub, sid, 1, obs[0])  # committed: the next step's first store call is its commit
    with redis_hung(cluster):
        # More steps, one after the other, than the coordinator has workers: were a worker
        # held past its step's deadline, the later steps would queue for one and time out.
        answers = [one_attempt(stub, step_request(sid, 2, obs[1])) for sid in robots]
    print("while Redis hung: " + ", ".join(f"{c.name} {r} {t * 1e3:.0f} ms" for c, r, t in answers))
    for code, reason, elapsed in answers:
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert elapsed < BUDGET_S + MARGIN_S
    # Each commit given up may have landed when Redis woke: the retry of the same seq gets
    # the stored reply or commits it now, once either way, equal to the reference.
    want, _ = reference_run(model, obs)
    for sid in robots:
        replies = [stub.Step(step_request(sid, seq, obs[seq - 1]), timeout=10) for seq in (2, 3)]
        assert [r.seq for r in replies] == [2, 3]
        for reply, ref in zip(replies, want[1:], strict=True):
            assert torch.allclose(tensor_codec.decode(reply.action), ref, atol=1e-5)
        got = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=10)
        assert got.seq == 3


def test_the_client_leaves_a_coordinator_that_cannot_reach_redis_after_one_attempt(
    cluster: LocalCluster,
) -> None:
    other = cluster.start_coordinator("coordinator-b", 0)
    failovers = REGISTRY.get_sample_value("actionmesh_client_failovers_total") or 0.0
    try:
        with ActionMeshClient([cluster.address, cluster.address_of(other)], max_attempts=1) as c:
            session = c.open_session()
            session.step(observations(12, 1, cluster.model.observation_dim)[0])
            with redis_hung(cluster), pytest.raises(ServiceUnavailable) as refused:
                session.step(torch.zeros(cluster.model.observation_dim))
            assert refused.value.code == "UNAVAILABLE"
            assert c.current_address == cluster.address_of(other)
    finally:
        other.stop()
    assert REGISTRY.get_sample_value("actionmesh_client_failovers_total") == failovers + 1
