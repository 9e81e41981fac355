"""A hostile client against a live coordinator: generated requests over the public protos and
raw bytes on the wire, a bounded number of each. Whatever comes in, the robot gets a clean
status (never UNKNOWN or INTERNAL), within its deadline, no non-finite action, no session it
was not told of is left behind, and the server serves normally afterwards."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.reference import open_session
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec, tensor_pb2
from tests.conftest import SMALL_MODEL

pytestmark = pytest.mark.timeout(600)

DEADLINE_S = 2.0
SLACK_S = 1.0  # a loaded 2-core machine; a stuck call would take far longer
CASES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI is not the place to explore
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLEAN_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DIM = SMALL_MODEL.observation_dim


class Told:
    """The session ids the coordinator gave out: every stored session must be one of them."""

    def __init__(self) -> None:
        self.ids: set[str] = set()


@pytest.fixture(scope="module")
def told() -> Told:
    return Told()


@pytest.fixture(scope="module")
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.address) as ch:
        yield ch


def call(what: str, fn: object, request: object) -> object | None:
    """One call with the robot's deadline: its reply, or None after a clean error status."""
    started = time.monotonic()
    try:
        reply = fn(request, timeout=DEADLINE_S)  # type: ignore[operator]
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert code in CLEAN_ERRORS, f"{what}: {code.name} {exc.details()[:300]}"  # type: ignore[attr-defined]
        reply = None
    assert time.monotonic() - started < DEADLINE_S + SLACK_S, f"{what}: past its deadline"
    return reply


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
observations = st.one_of(
    st.lists(floats, min_size=DIM, max_size=DIM).map(
        lambda v: tensor_codec.encode(torch.tensor(v, dtype=torch.float32))
    ),
    st.builds(
        tensor_pb2.Tensor,
        dtype=st.integers(0, 12),
        shape=st.lists(st.integers(-5, 2**40), max_size=12),
        data=st.binary(max_size=256),
    ),
)


@given(
    use_real=st.booleans(),
    fake_id=st.text(max_size=300) | st.just("x" * 20_000),
    seq=st.integers(0, 2**64 - 1),
    observation=observations,
    priority=st.integers(0, 2**31 - 1),
)
@CASES
def test_generated_steps(
    stub: session_pb2_grpc.SessionServiceStub,
    use_real: bool,
    fake_id: str,
    seq: int,
    observation: tensor_pb2.Tensor,
    priority: int,
    told: Told,
) -> None:
    session_id = open_session(stub) if use_real else fake_id
    told.ids.add(session_id)
    request = session_pb2.StepRequest(
        session_id=session_id,
        seq=seq if not use_real else 1,
        observation=observation,
        priority=priority,  # type: ignore[arg-type]
    )
    reply = call("Step", stub.Step, request)
    if isinstance(reply, session_pb2.StepReply):
        assert torch.isfinite(tensor_codec.decode(reply.action)).all(), "a non-finite action"


@given(
    ttl_s=st.floats(allow_nan=True, allow_infinity=True),
    client_id=st.text(max_size=300) | st.just("c" * 1_000_000),
    wait_replicas=st.integers(0, 2**32 - 1),
)
@CASES
def test_generated_opens(
    stub: session_pb2_grpc.SessionServiceStub,
    ttl_s: float,
    client_id: str,
    wait_replicas: int,
    told: Told,
) -> None:
    request = session_pb2.OpenSessionRequest(
        ttl_s=ttl_s, client_id=client_id, wait_replicas=wait_replicas
    )
    reply = call("OpenSession", stub.OpenSession, request)
    if isinstance(reply, session_pb2.OpenSessionReply):
        told.ids.add(reply.session_id)
        assert len(client_id) <= 128 and math.isfinite(ttl_s) and ttl_s >= 0


METHODS = ["OpenSession", "Step", "GetSession", "CloseSession"]


@given(method=st.sampled_from(METHODS), data=st.binary(min_size=1, max_size=512))
@CASES
def test_raw_bytes_on_the_wire(channel: grpc.Channel, method: str, data: bytes, told: Told) -> None:
    raw = channel.unary_unary(f"/actionmesh.v1.SessionService/{method}")
    reply = call(f"{method} (raw)", raw, data)
    if method == "OpenSession" and isinstance(reply, bytes):  # the bytes parsed as a request
        told.ids.add(session_pb2.OpenSessionReply.FromString(reply).session_id)


def test_raw_bytes_on_a_stream_are_error_items_and_the_stream_goes_on(
    channel: grpc.Channel, stub: session_pb2_grpc.SessionServiceStub, told: Told
) -> None:
    session_id = open_session(stub)
    told.ids.add(session_id)
    good = session_pb2.StepRequest(
        session_id=session_id,
        seq=1,
        observation=tensor_codec.encode(torch.zeros(DIM)),
    )
    raw = channel.stream_stream("/actionmesh.v1.SessionService/StreamSteps")
    replies = list(raw(iter([b"\xff\xff\xff", good.SerializeToString()]), timeout=DEADLINE_S * 2))
    items = [session_pb2.StreamStepsReply.FromString(r) for r in replies]  # type: ignore[arg-type]
    assert items[0].WhichOneof("result") == "error"
    assert items[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert items[1].WhichOneof("result") == "reply" and items[1].reply.seq == 1


def test_afterwards_the_server_serves_and_no_untold_session_is_left(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, told: Told
) -> None:
    session_id = open_session(stub)
    told.ids.add(session_id)
    request = session_pb2.StepRequest(
        session_id=session_id, seq=1, observation=tensor_codec.encode(torch.ones(DIM))
    )
    reply = stub.Step(request, timeout=DEADLINE_S)
    assert reply.serve_mode == session_pb2.SERVE_MODE_FULL
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        stored = {
            key.decode().split("{", 1)[1].split("}", 1)[0]
            for key in client.scan_iter(match="am:{*}:session")
        }
    finally:
        client.close()
    assert stored <= told.ids, f"{len(stored - told.ids)} sessions nobody was told of"
