"""Drain: only an admin may; a draining coordinator opens no session (UNAVAILABLE, reason
draining), serves open sessions' steps for the grace telling the robot to move (a trailer on
Step, the end of a stream after one more step), then refuses them. SessionService over a real
gRPC server on 127.0.0.1, the step path in this process (tests/support/in_process.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from prometheus_client import REGISTRY

from actionmesh_client.client_errors import DRAINING_KEY, ERROR_KEY
from chaos.reference import observations, step_request
from service.coordinator import session_handlers
from service.coordinator.drain import Drain
from service.coordinator.session_access import SessionAccess
from service.coordinator.session_servicer import SessionServicer
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2, session_pb2_grpc
from tests.support.in_process import InProcessCoordinator
from tests.unit.test_identity import DIRECTORY, OPS_TOKEN, ROBOT_TOKEN

pytestmark = pytest.mark.timeout(60)

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=3, tokens=4, memory_tokens=1, n_stages=3)
ROBOT = (("authorization", f"Bearer {ROBOT_TOKEN}"),)
OPS = (("authorization", f"Bearer {OPS_TOKEN}"),)


def unavailable_steps() -> float:
    return REGISTRY.get_sample_value("actionmesh_step_errors_total", {"code": "UNAVAILABLE"}) or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_drain_keeps_the_earlier_end_of_its_grace_and_tells_its_listeners_once() -> None:
    clock, told = Clock(), []
    drain = Drain(10.0, clock)
    drain.listen(lambda: told.append("early"))
    assert not drain.draining() and drain.grace_left_s() is None
    first = drain.begin()  # 0: the default grace
    assert (first.grace_left_s, first.already_draining) == (10.0, False)
    assert drain.begin(30.0).grace_left_s == 10.0  # never lengthened
    second = drain.begin(4.0)
    assert (second.grace_left_s, second.already_draining) == (4.0, True)
    drain.listen(lambda: told.append("late"))  # told at once: it has begun
    assert told == ["early", "late"]
    clock.now += 3.0
    assert drain.grace_left_s() == 1.0 and not drain.steps_refused()
    clock.now += 1.0
    assert drain.grace_left_s() == 0.0 and drain.steps_refused()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="grace_s"):
            drain.begin(bad)


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    built = InProcessCoordinator({"v1": ActionModel(CFG).eval()}, serving=["v1"])
    yield built
    built.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stub(
    coordinator: InProcessCoordinator, clock: Clock
) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    servicer = SessionServicer(
        coordinator.engine,
        2.0,
        1 << 20,
        SessionAccess("token", DIRECTORY, None),
        drain=Drain(10.0, clock),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    session_handlers.add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)
    server.stop(0)


def code_and_reason(call: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.Call)
    trailers = dict(call.trailing_metadata() or ())
    return call.code(), str(trailers.get(ERROR_KEY, ""))


def test_only_an_admin_may_drain(stub: session_pb2_grpc.SessionServiceStub) -> None:
    drain = session_pb2.DrainRequest(grace_s=5.0)
    with pytest.raises(grpc.RpcError) as nobody:
        stub.Drain(drain, timeout=5)
    assert code_and_reason(nobody.value) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
    with pytest.raises(grpc.RpcError) as robot:
        stub.Drain(drain, metadata=ROBOT, timeout=5)
    assert code_and_reason(robot.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "needs admin" in (robot.value.details() or "")
    with pytest.raises(grpc.RpcError) as bad:
        stub.Drain(session_pb2.DrainRequest(grace_s=-1.0), metadata=OPS, timeout=5)
    assert code_and_reason(bad.value) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input")
    # none of these drained it: sessions still open
    opened = stub.OpenSession(session_pb2.OpenSessionRequest(), metadata=ROBOT, timeout=5)
    assert opened.session_id
    reply = stub.Drain(drain, metadata=OPS, timeout=5)
    assert (reply.grace_left_s, reply.already_draining) == (5.0, False)


def test_a_draining_coordinator_opens_nothing_serves_steps_for_the_grace_then_refuses(
    stub: session_pb2_grpc.SessionServiceStub, clock: Clock
) -> None:
    session_id = stub.OpenSession(
        session_pb2.OpenSessionRequest(), metadata=ROBOT, timeout=5
    ).session_id
    obs = observations(0, 4, CFG.observation_dim)
    _, call = stub.Step.with_call(step_request(session_id, 1, obs[0]), metadata=ROBOT, timeout=5)
    assert DRAINING_KEY not in dict(call.trailing_metadata() or ())

    stub.Drain(session_pb2.DrainRequest(grace_s=5.0), metadata=OPS, timeout=5)
    with pytest.raises(grpc.RpcError) as refused:
        stub.OpenSession(session_pb2.OpenSessionRequest(), metadata=ROBOT, timeout=5)
    assert code_and_reason(refused.value) == (grpc.StatusCode.UNAVAILABLE, "draining")

    reply, call = stub.Step.with_call(
        step_request(session_id, 2, obs[1]), metadata=ROBOT, timeout=5
    )
    assert reply.seq == 2 and dict(call.trailing_metadata())[DRAINING_KEY] == "5.000"

    stream = stub.StreamSteps(
        iter([step_request(session_id, 3, obs[2]), step_request(session_id, 4, obs[3])]),
        metadata=ROBOT,
        timeout=5,
    )
    items = []
    with pytest.raises(grpc.RpcError) as ended:
        items.extend(stream)
    assert [i.reply.seq for i in items] == [3]  # one more step, then the stream ends
    assert code_and_reason(ended.value) == (grpc.StatusCode.UNAVAILABLE, "draining")

    clock.now += 5.0  # the grace is over: steps are refused too, the session not advanced
    refused_before = unavailable_steps()
    with pytest.raises(grpc.RpcError) as late:
        stub.Step(step_request(session_id, 4, obs[3]), metadata=ROBOT, timeout=5)
    assert code_and_reason(late.value) == (grpc.StatusCode.UNAVAILABLE, "draining")
    assert unavailable_steps() == refused_before + 1, "a refused step counts as a step error"
    info = stub.GetSession(
        session_pb2.GetSessionRequest(session_id=session_id), metadata=ROBOT, timeout=5
    )
    assert info.seq == 3
