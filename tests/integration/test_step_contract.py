"""The step contract over real gRPC: retries, seq errors, unknown and expired sessions, bad input."""

from __future__ import annotations

import math
import time

import grpc
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from chaos.reference import observations, open_session, step, step_request
from service.local.local_cluster import LocalCluster
from service.proto import (
    session_pb2,
    session_pb2_grpc,
    stage_pb2,
    stage_pb2_grpc,
    tensor_codec,
    tensor_pb2,
)


def forward_items(cluster: LocalCluster) -> list[int]:
    """How many session items each shard has computed, from its Info."""
    counts = []
    for address in cluster.stage_addresses():
        with grpc.insecure_channel(address) as channel:
            info = stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)
            counts.append(info.forward_items_total)
    return counts


def expect_error(
    stub: session_pb2_grpc.SessionServiceStub, request: session_pb2.StepRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Step(request, timeout=10)
    return caught.value


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The status's ErrorInfo (every coordinator error has one)."""
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR)), status
    assert info.domain == "actionmesh.v1.SessionService"
    return info


def assert_healthy(cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub) -> None:
    addresses = [cluster.address, *cluster.stage_addresses()]
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, address
    sid = open_session(stub)
    assert step(stub, sid, 1, torch.zeros(cluster.model.observation_dim)).seq == 1


def test_retry_of_last_seq_returns_stored_reply_without_recompute(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    obs = observations(7, 3, cluster.model.observation_dim)
    for seq in (1, 2, 3):
        first = step(stub, sid, seq, obs[seq - 1])
    before = forward_items(cluster)
    again = stub.Step(step_request(sid, 3, obs[2]), timeout=10)
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )
    assert forward_items(cluster) == before, "a retried step ran the stages again"
    # The next step is computed normally after a retry.
    assert step(stub, sid, 4, obs[0]).seq == 4
    assert [b + 1 for b in before] == forward_items(cluster)


def test_open_session_refuses_a_nan_ttl(stub: session_pb2_grpc.SessionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.OpenSession(session_pb2.OpenSessionRequest(ttl_s=math.nan), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_step_without_a_client_deadline_is_served(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    reply = stub.Step(step_request(sid, 1, torch.zeros(cluster.model.observation_dim)))
    assert reply.seq == 1


def test_seq_gap_and_replay_of_old_seq_are_refused_with_the_current_seq(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    obs = torch.zeros(cluster.model.observation_dim)
    step(stub, sid, 1, obs)
    step(stub, sid, 2, obs)
    for bad in (4, 1, 0):
        error = expect_error(stub, step_request(sid, bad, obs))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is at seq 2" in (error.details() or "")
        assert ("actionmesh-current-seq", "2") in (error.trailing_metadata() or ())
        assert ("actionmesh-error", "seq_conflict") in (error.trailing_metadata() or ())
        # The same, as any gRPC stack reads it: google.rpc.Status with ErrorInfo.
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None and status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        info = error_info(status)
        assert info.reason == "SEQ_CONFLICT" and info.metadata["current_seq"] == "2"
    assert step(stub, sid, 3, obs).seq == 3


def test_unknown_and_closed_sessions_are_not_found(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    obs = torch.zeros(cluster.model.observation_dim)
    error = expect_error(stub, step_request("no-such-session", 1, obs))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "open a new session" in (error.details() or "")
    sid = open_session(stub)
    step(stub, sid, 1, obs)
    closed = stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), timeout=5)
    assert closed.closed
    assert expect_error(stub, step_request(sid, 2, obs)).code() == grpc.StatusCode.NOT_FOUND


def test_expired_session_is_not_found(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    obs = torch.zeros(cluster.model.observation_dim)
    sid = open_session(stub, ttl_s=0.5)
    step(stub, sid, 1, obs)
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
    assert info.seq == 1 and 0 < info.ttl_left_s <= 0.5
    assert [s.seq for s in info.stage_states] == [1, 1, 1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        time.sleep(0.05)
    else:
        pytest.fail("session did not expire within 10 s of a 0.5 s TTL")
    assert expect_error(stub, step_request(sid, 2, obs)).code() == grpc.StatusCode.NOT_FOUND


def _bad_observations(dim: int) -> dict[str, tuple[tensor_pb2.Tensor, str]]:
    nan = torch.zeros(dim)
    nan[3] = math.nan
    inf = torch.zeros(dim)
    inf[0] = math.inf
    short = tensor_codec.encode(torch.zeros(dim))
    short.data = short.data[:-4]
    return {
        "nan": (tensor_codec.encode(nan), "NaN or Inf at index [3]"),
        "inf": (tensor_codec.encode(inf), "NaN or Inf at index [0]"),
        "shape": (tensor_codec.encode(torch.zeros(dim + 1)), f"shape must be [{dim}]"),
        "rank": (tensor_codec.encode(torch.zeros(1, dim)), f"shape must be [{dim}]"),
        "dtype": (tensor_codec.encode(torch.zeros(dim, dtype=torch.float64)), "must be float32"),
        "bytes": (short, "needs"),
        "oversize": (tensor_codec.encode(torch.zeros(20_000)), "the limit is"),
        "missing": (tensor_pb2.Tensor(), "unsupported dtype"),
    }


@pytest.mark.parametrize("case", sorted(_bad_observations(24)))
def test_bad_observations_are_invalid_argument_and_servers_stay_healthy(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, case: str
) -> None:
    message, phrase = _bad_observations(cluster.model.observation_dim)[case]
    sid = open_session(stub)
    request = session_pb2.StepRequest(session_id=sid, seq=1, observation=message)
    error = expect_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert phrase in (error.details() or ""), error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and error_info(status).reason == "INVALID_INPUT"
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in status.details if d.Is(bad_request.DESCRIPTOR))
    assert [v.field for v in bad_request.field_violations] == ["observation"]
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
    assert info.seq == 0, "a refused step advanced the session"
    assert_healthy(cluster, stub)


def test_stream_reports_errors_per_step_and_keeps_going(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    obs = torch.zeros(cluster.model.observation_dim)
    requests = [step_request(sid, 1, obs), step_request(sid, 3, obs), step_request(sid, 2, obs)]
    replies = list(stub.StreamSteps(iter(requests), timeout=30))
    assert [r.WhichOneof("result") for r in replies] == ["reply", "error", "reply"]
    assert replies[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert replies[1].error.current_seq == 1
    status = replies[1].error.status
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert error_info(status).reason == "SEQ_CONFLICT"
    assert error_info(status).metadata["current_seq"] == "1"
    assert replies[2].reply.seq == 2


def test_an_unknown_priority_is_invalid_argument(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    sid = open_session(stub)
    obs = torch.zeros(cluster.model.observation_dim)
    request = step_request(sid, 1, obs)
    request.priority = 7  # type: ignore[assignment]  # a newer client's class, say
    error = expect_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority 7" in (error.details() or "")
    served = step_request(sid, 1, obs)
    served.priority = session_pb2.PRIORITY_SAFETY
    reply = stub.Step(served, timeout=10)
    assert reply.seq == 1 and reply.serve_mode == session_pb2.SERVE_MODE_FULL
