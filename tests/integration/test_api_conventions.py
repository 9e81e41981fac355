"""The session API's conventions on a real cluster over gRPC: a retried OpenSession with the
same request_id returns the same session, a reply echoes the observation_id and tick it answers
(a stored reply too), the ActionSpec says the action period and joint names, and a step's own
budget_ms is honoured on unary calls and streams alike."""

from __future__ import annotations

import grpc
import pytest
import torch

from service.proto import session_pb2, session_pb2_grpc, tensor_codec

Stub = session_pb2_grpc.SessionServiceStub


def open_request(request_id: str, client_id: str = "conventions") -> session_pb2.OpenSessionRequest:
    return session_pb2.OpenSessionRequest(client_id=client_id, request_id=request_id)


def step_request(session_id: str, seq: int, dim: int, **fields: object) -> session_pb2.StepRequest:
    return session_pb2.StepRequest(
        session_id=session_id,
        seq=seq,
        observation=tensor_codec.encode(torch.zeros(dim)),
        **fields,  # type: ignore[arg-type]
    )


def test_a_retried_open_with_the_same_request_id_returns_the_same_session(stub: Stub) -> None:
    first = stub.OpenSession(open_request("open-1"), timeout=5)
    again = stub.OpenSession(open_request("open-1"), timeout=5)
    other = stub.OpenSession(open_request("open-2"), timeout=5)
    elsewhere = stub.OpenSession(open_request("open-1", client_id="another robot"), timeout=5)
    plain = [stub.OpenSession(open_request(""), timeout=5).session_id for _ in range(2)]
    assert again.session_id == first.session_id
    assert len({first.session_id, other.session_id, elsewhere.session_id, *plain}) == 5
    dim = first.action_spec.observation_dim
    stub.Step(step_request(first.session_id, 1, dim), timeout=5)
    # A retry that comes after the session moved on still gets that session, at its seq.
    late = stub.OpenSession(open_request("open-1"), timeout=5)
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=late.session_id), timeout=5)
    assert late.session_id == first.session_id and info.seq == 1


def test_the_action_spec_says_the_period_and_the_joint_names(stub: Stub) -> None:
    spec = stub.OpenSession(open_request(""), timeout=5).action_spec
    assert spec.action_period_ms == 20.0
    assert list(spec.joint_names) == [f"joint_{i}" for i in range(spec.joints)]


def test_replies_echo_the_observation_id_and_tick_even_when_stored(stub: Stub) -> None:
    opened = stub.OpenSession(open_request(""), timeout=5)
    dim = opened.action_spec.observation_dim
    request = step_request(opened.session_id, 1, dim, observation_id=2**63 + 5, tick=40)
    reply = stub.Step(request, timeout=5)
    assert (reply.observation_id, reply.first_action_tick) == (2**63 + 5, 40)
    # The same seq again with another observation: the stored reply, naming the first one.
    other = step_request(opened.session_id, 1, dim, observation_id=6, tick=41)
    stored = stub.Step(other, timeout=5)
    assert (stored.observation_id, stored.first_action_tick) == (2**63 + 5, 40)
    streamed = list(
        stub.StreamSteps(
            iter([step_request(opened.session_id, 2, dim, observation_id=7, tick=42)]), timeout=5
        )
    )
    assert [(i.reply.observation_id, i.reply.first_action_tick) for i in streamed] == [(7, 42)]


def test_a_budget_no_step_can_meet_is_refused_and_the_session_not_advanced(stub: Stub) -> None:
    """A microsecond: the step's own budget wins over step_timeout_s (2 s) and over the call's
    deadline (5 s), on a unary call and on a stream."""
    opened = stub.OpenSession(open_request(""), timeout=5)
    dim = opened.action_spec.observation_dim
    hopeless = step_request(opened.session_id, 1, dim, budget_ms=0.001)
    late = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    with pytest.raises(grpc.RpcError) as refused:
        stub.Step(hopeless, timeout=5)
    assert refused.value.code() in late
    (item,) = list(stub.StreamSteps(iter([hopeless]), timeout=5))
    assert item.HasField("error") and item.error.code in {c.value[0] for c in late}
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=opened.session_id), timeout=5)
    assert info.seq == 0
    roomy = step_request(opened.session_id, 1, dim, budget_ms=5000.0)
    assert stub.Step(roomy, timeout=5).seq == 1
    with pytest.raises(grpc.RpcError, match="budget_ms") as bad:
        stub.Step(step_request(opened.session_id, 2, dim, budget_ms=-1.0), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
