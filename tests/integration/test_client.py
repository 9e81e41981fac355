"""The client library against real processes: steps, attach, typed errors, coordinator failover."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from chaos.reference import observations, reference_run
from service.client import (
    ActionMeshClient,
    ActionSpec,
    InvalidObservation,
    SeqConflict,
    ServiceUnavailable,
    Session,
    SessionNotFound,
    StepResult,
)
from service.local.child_process import ChildProcess
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from tests.conftest import SMALL_MODEL
from tests.support.waiting import wait_for

PERIOD_S = 0.02  # 50 Hz


@pytest.fixture(scope="module")
def model(cluster: LocalCluster) -> ActionModel:
    loaded, _ = weights.load_model(cluster.weights_dir)
    return loaded


def assert_reference(model: ActionModel, obs: list[torch.Tensor], got: list[StepResult]) -> None:
    assert [r.seq for r in got] == list(range(1, len(got) + 1)), "a step was lost or repeated"
    want, _ = reference_run(model, obs[: len(got)])
    for result, ref in zip(got, want, strict=True):
        assert result.serve_mode == "FULL"
        assert torch.allclose(torch.from_numpy(result.action), ref, atol=1e-5), f"seq {result.seq}"


def address_of(child: ChildProcess) -> str:
    return f"127.0.0.1:{child.ports['grpc_port']}"


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return bool(check.status == health_pb2.HealthCheckResponse.SERVING)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_unary_and_stream_steps_equal_the_reference(
    cluster: LocalCluster, model: ActionModel
) -> None:
    dim = SMALL_MODEL.observation_dim
    obs = observations(1, 60, dim)
    with ActionMeshClient([cluster.address], client_id="test") as client:
        session = client.open_session()
        joints = SMALL_MODEL.joints
        names = tuple(f"joint_{i}" for i in range(joints))
        assert session.action_spec == ActionSpec(dim, SMALL_MODEL.horizon, joints, 20.0, names)
        results = [session.step(o) for o in obs[:30]]
        with session.stream() as stream:
            results += [stream.step(o, priority="SAFETY") for o in obs[30:]]
        assert session.seq == 60
        info = session.info()
        assert (info.seq, info.client_id, info.model_version) == (60, "test", session.model_version)
        assert all(r.model_version == session.model_version for r in results)
        assert all(r.action.shape == (SMALL_MODEL.horizon, SMALL_MODEL.joints) for r in results)
        assert_reference(model, obs, results)
        assert session.close()


def test_attach_from_a_second_client_continues_at_the_right_seq(
    cluster: LocalCluster, model: ActionModel
) -> None:
    obs = observations(2, 12, SMALL_MODEL.observation_dim)
    with (
        ActionMeshClient([cluster.address]) as first,
        ActionMeshClient([cluster.address]) as second,
    ):
        session = first.open_session()
        results = [session.step(o) for o in obs[:7]]
        attached = second.attach(session.session_id)
        assert (attached.seq, attached.model_version) == (7, session.model_version)
        with attached.stream() as stream:
            results += [stream.step(o) for o in obs[7:]]
        assert attached.seq == 12 and attached.action_spec == session.action_spec
        assert_reference(model, obs, results)
        # The first controller, unaware, sends seq 8: a usage bug, surfaced with the current seq.
        with pytest.raises(SeqConflict) as conflict:
            session.step(obs[7])
        assert conflict.value.current_seq == 12
        with session.stream() as stale, pytest.raises(SeqConflict) as conflict:
            stale.step(obs[7])
        assert conflict.value.current_seq == 12 and session.seq == 7


def test_errors_are_typed_and_the_servers_stay_healthy(cluster: LocalCluster) -> None:
    obs = observations(3, 3, SMALL_MODEL.observation_dim)
    nan = obs[0].clone()
    nan[3] = float("nan")
    with ActionMeshClient([cluster.address]) as client:
        session = client.open_session()
        session.step(obs[0])
        with pytest.raises(InvalidObservation, match=r"NaN or Inf at index \[3\]"):
            session.step(nan)
        with session.stream() as stream:
            with pytest.raises(InvalidObservation, match="NaN"):
                stream.step(nan)
            with pytest.raises(InvalidObservation, match="shape"):
                stream.step(torch.zeros(5))
            assert stream.step(obs[1]).seq == 2  # the same stream goes on
        assert session.info().seq == 2
        with pytest.raises(SessionNotFound, match="not found"):
            client.attach("no-such-session")
        assert session.close()
        with pytest.raises(SessionNotFound):
            session.step(obs[2])
        with session.stream() as stream, pytest.raises(SessionNotFound):
            stream.step(obs[2])
        assert client.open_session().step(obs[0]).seq == 1
    assert cluster.coordinator is not None and cluster.coordinator.returncode() is None
    assert all(shard.returncode() is None for shard in cluster.shards)
    assert serving(cluster.address)


def test_no_coordinator_answering_is_service_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    retries = counter("actionmesh_client_retries_total", reason="UNAVAILABLE")
    with (
        ActionMeshClient([dead], max_attempts=3) as client,
        pytest.raises(ServiceUnavailable) as failed,
    ):
        client.open_session()
    assert (failed.value.attempts, failed.value.addresses) == (3, [dead])
    assert "3 attempt(s)" in str(failed.value) and dead in str(failed.value)
    assert counter("actionmesh_client_retries_total", reason="UNAVAILABLE") == retries + 2


class SteppingRobot(threading.Thread):
    """Steps a session at 50 Hz, unary or over one stream, until stopped; keeps every result."""

    def __init__(self, session: Session, obs: list[torch.Tensor], streaming: bool) -> None:
        super().__init__(daemon=True)
        self.session, self.obs, self.streaming = session, obs, streaming
        self.results: list[StepResult] = []
        self.latencies_s: list[float] = []
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            with self.session.stream() as stream:
                step = stream.step if self.streaming else self.session.step
                while not self.stopped.is_set() and len(self.results) < len(self.obs):
                    sent = time.monotonic()
                    self.results.append(step(self.obs[len(self.results)]))
                    self.latencies_s.append(time.monotonic() - sent)
                    self.stopped.wait(PERIOD_S)
        except BaseException as exc:  # surfaced to the test
            self.error = exc

    def progress(self, steps: int) -> None:
        target = len(self.results) + steps
        wait_for(lambda: len(self.results) >= target or self.error is not None, 30, "steps")
        assert self.error is None, self.error


@contextmanager
def extra_coordinator(cluster: LocalCluster, name: str) -> Iterator[ChildProcess]:
    child = cluster.start_coordinator(name, 0)
    try:
        yield child
    finally:
        child.stop()


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
def test_client_fails_over_when_its_coordinator_is_killed(
    cluster: LocalCluster, model: ActionModel, streaming: bool
) -> None:
    obs = observations(4, 2000, SMALL_MODEL.observation_dim)
    failovers = counter("actionmesh_client_failovers_total")
    retries = counter("actionmesh_client_retries_total", reason="UNAVAILABLE")
    with (
        extra_coordinator(cluster, f"coordinator-b-{streaming}") as doomed,
        ActionMeshClient([address_of(doomed), cluster.address], step_timeout_s=2.0) as client,
    ):
        session = client.open_session()
        robot = SteppingRobot(session, obs, streaming)
        robot.start()
        try:
            robot.progress(20)
            assert client.current_address == address_of(doomed)
            doomed.kill()
            killed_at = len(robot.results)
            robot.progress(30)
        finally:
            robot.stopped.set()
            robot.join(timeout=10)
        assert robot.error is None, robot.error
        assert client.current_address == cluster.address
        n = len(robot.results)
        assert session.seq == n and session.info().seq == n
        assert_reference(model, obs, robot.results)
    print(f"kill -9: slowest step after it {max(robot.latencies_s[killed_at:]) * 1e3:.0f} ms")
    assert counter("actionmesh_client_failovers_total") >= failovers + 1
    assert counter("actionmesh_client_retries_total", reason="UNAVAILABLE") >= retries + 1


def test_client_leaves_a_hung_coordinator(cluster: LocalCluster, model: ActionModel) -> None:
    """A SIGSTOPped coordinator keeps its connections up but answers nothing: after failures in
    a row the client moves on, and the session continues on the other coordinator."""
    obs = observations(5, 2000, SMALL_MODEL.observation_dim)
    failovers = counter("actionmesh_client_failovers_total")
    timeouts = counter("actionmesh_client_retries_total", reason="DEADLINE_EXCEEDED")
    with (
        extra_coordinator(cluster, "coordinator-hung") as hung,
        ActionMeshClient([address_of(hung), cluster.address], step_timeout_s=0.3) as client,
    ):
        session = client.open_session()
        robot = SteppingRobot(session, obs, streaming=True)
        robot.start()
        try:
            robot.progress(20)
            assert client.current_address == address_of(hung)
            hung.signal(signal.SIGSTOP)
            stopped_at = len(robot.results)
            try:
                robot.progress(20)
            finally:
                hung.signal(signal.SIGCONT)
        finally:
            robot.stopped.set()
            robot.join(timeout=10)
        assert robot.error is None, robot.error
        assert client.current_address == cluster.address
        assert session.info().seq == len(robot.results)
        assert_reference(model, obs, robot.results)
    print(f"SIGSTOP: slowest step after it {max(robot.latencies_s[stopped_at:]) * 1e3:.0f} ms")
    assert counter("actionmesh_client_failovers_total") == failovers + 1
    assert counter("actionmesh_client_retries_total", reason="DEADLINE_EXCEEDED") >= timeouts + 2
