"""`actionmesh drain` on one of two coordinators (auth = token, mutual TLS on every hop), as an
operator runs it: a robot's or nobody's token is refused; an admin's drains it. The drained
coordinator says NOT_SERVING (gRPC health, /ready 503) and opens no session; two robots on the
client library (one unary, one streaming), stepping at 50 Hz from before the drain to after
its grace, never see a failed step and are on the other coordinator within the grace; once the
grace is over the drained one refuses steps."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actionmesh_client.client_errors import ERROR_KEY
from chaos.reference import step_request
from service.client import ActionMeshClient, Session
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2_grpc
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_health import ready_status
from tests.support.locked_cluster import Tokens, make_identities

pytestmark = pytest.mark.timeout(300)

GRACE_S = 3.0
PERIOD_S = 0.02  # 50 Hz
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_identities(tmp_path_factory.mktemp("secrets"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[LocalCluster]:
    settings = cluster_settings(tmp_path_factory.mktemp("drain"), tls=True, coordinators=2)
    overrides = {"auth": "token", "identities_file": tokens.path, "identity_steps_per_s": 0}
    with LocalCluster(settings, model=SMALL_MODEL, coordinator_overrides=overrides) as running:
        yield running


def token_file(tokens: Tokens, identity: str, folder: Path) -> Path:
    path = folder / f"{identity}.token"
    path.write_text(tokens.by_identity[identity] + "\n")
    path.chmod(0o600)
    return path


def drain(cluster: LocalCluster, *flags: str) -> subprocess.CompletedProcess[str]:
    """`actionmesh drain` on the first coordinator, as an operator's shell runs it."""
    assert cluster.tls_dir is not None
    argv = ["drain", "--coordinator", cluster.addresses[0], "--tls-dir", str(cluster.tls_dir)]
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *argv, *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


class Robot(threading.Thread):
    """Steps its session every PERIOD_S (unary or over a stream) until told to stop; keeps
    every exception a step raised."""

    def __init__(self, client: ActionMeshClient, session: Session, streaming: bool) -> None:
        super().__init__(daemon=True)
        self.client, self.session, self.streaming = client, session, streaming
        self.stop = threading.Event()
        self.steps, self.failures = 0, list[BaseException]()

    def run(self) -> None:
        observation = np.zeros(SMALL_MODEL.observation_dim, dtype=np.float32)
        stream = self.session.stream() if self.streaming else None
        try:
            while not self.stop.wait(PERIOD_S):
                try:
                    (stream or self.session).step(observation)
                    self.steps += 1
                except Exception as exc:  # every failed step is the finding
                    self.failures.append(exc)
        finally:
            if stream is not None:
                stream.close()


def test_only_an_admin_may_drain(cluster: LocalCluster, tokens: Tokens, tmp_path: Path) -> None:
    nobody = drain(cluster)
    assert nobody.returncode == 1 and "UNAUTHENTICATED" in nobody.stderr, nobody.stderr
    robot = drain(cluster, "--token-file", str(token_file(tokens, "alice", tmp_path)))
    assert robot.returncode == 1 and "PERMISSION_DENIED" in robot.stderr, robot.stderr
    assert "needs admin" in robot.stderr
    checkpoint_only = drain(cluster, "--token-file", str(token_file(tokens, "ci", tmp_path)))
    assert checkpoint_only.returncode == 1 and "PERMISSION_DENIED" in checkpoint_only.stderr
    port = cluster.coordinators[0].ports["metrics_port"]
    assert ready_status(port) == 200, "a refused drain drained it"


def test_robots_move_off_a_draining_coordinator_without_a_failed_step(
    cluster: LocalCluster, tokens: Tokens, tmp_path: Path
) -> None:
    drained, other = cluster.addresses
    tls = cluster.client_tls("robot-a")
    alice = tokens.by_identity["alice"]
    clients = [ActionMeshClient([drained, other], tls=tls, token=alice) for _ in range(2)]
    robots = [Robot(c, c.open_session(), s) for c, s in zip(clients, (False, True), strict=True)]
    assert all(c.current_address == drained for c in clients)
    for robot in robots:
        robot.start()
    try:
        time.sleep(1.0)
        ops = token_file(tokens, "ops", tmp_path)
        done = drain(cluster, "--token-file", str(ops), "--grace-s", str(GRACE_S), "--json")
        assert done.returncode == 0, done.stderr
        assert '"already_draining": false' in done.stdout
        drained_at = time.monotonic()
        steps_before = [robot.steps for robot in robots]
        child = cluster.coordinators[0]
        assert ready_status(child.ports["metrics_port"]) == 503
        assert cluster.tls_dir is not None
        with cluster.channel("robot-a") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "actionmesh.v1.SessionService"):
                request = health_pb2.HealthCheckRequest(service=service)
                assert health.Check(request, timeout=5).status == NOT_SERVING
        with ActionMeshClient([drained, other], tls=tls, token=alice) as newcomer:
            newcomer.open_session().close()
            assert newcomer.current_address == other  # refused on the drained one, opened here
        time.sleep(max(0.0, drained_at + GRACE_S / 2 - time.monotonic()))
        # told to move by the answers of the grace (a trailer; the stream's end), not refused
        assert [r.client.current_address for r in robots] == [other, other]
        time.sleep(max(0.0, drained_at + GRACE_S + 1.0 - time.monotonic()))
    finally:
        for robot in robots:
            robot.stop.set()
            robot.join(timeout=10)
    for robot, before in zip(robots, steps_before, strict=True):
        kind = "stream" if robot.streaming else "unary"
        assert robot.failures == [], f"{kind} robot: {robot.failures[:3]}"
        assert before > 0 and robot.steps - before >= 20, f"{kind} robot: {before}, {robot.steps}"
        assert robot.client.current_address == other, f"{kind} robot still on the drained one"
    # Past the grace the drained coordinator refuses even an open session's steps.
    session = robots[0].session
    obs = torch.zeros(SMALL_MODEL.observation_dim)
    with cluster.channel("robot-a") as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        metadata = (("authorization", f"Bearer {alice}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Step(step_request(session.session_id, session.seq + 1, obs), metadata=metadata)
        trailers = dict(refused.value.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert trailers[ERROR_KEY] == "draining"
    for client in clients:
        client.close()
