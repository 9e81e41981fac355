"""Robots stepping a real cluster, and the checks that nothing was lost or applied twice.

Used by the tests; talks to the cluster as a client (its coordinator's address) and reads the
model only to compute the in-process reference."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import grpc
import torch

from chaos.fleet import RETRYABLE, SteppingRobot
from chaos.reference import observations, reference_run
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2, session_pb2_grpc

ROBOTS, PERIOD_S, MAX_STEPS = 4, 0.02, 3000


class RunningCluster(Protocol):
    """What the checks need of a cluster: where its coordinator listens and which model it
    serves (service.local.local_cluster.LocalCluster is one)."""

    @property
    def address(self) -> str: ...

    @property
    def model(self) -> ModelConfig: ...

    @property
    def weights_dir(self) -> Path: ...


@contextmanager
def robots_stepping(
    cluster: RunningCluster,
    wait_replicas: int = 0,
    period_s: float = PERIOD_S,
    models: dict[str, ActionModel] | None = None,
    check: bool = True,
) -> Iterator[list[SteppingRobot]]:
    """models: the reference of every version the steps may run on (default: the cluster's);
    check=False leaves the checks of the answers to the caller."""
    dim = cluster.model.observation_dim
    with grpc.insecure_channel(cluster.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        robots = [
            SteppingRobot(
                stub,
                observations(i, MAX_STEPS, dim),
                period_s,
                streaming=i % 2 == 0,
                wait_replicas=wait_replicas,
            )
            for i in range(ROBOTS)
        ]
        for robot in robots:
            robot.start()
        try:
            yield robots
        finally:
            for robot in robots:
                robot.stop()
            for robot in robots:
                robot.join(timeout=30)
        if check:
            check_nothing_lost_or_doubled(cluster, stub, robots, models)


def progress(robots: list[SteppingRobot], steps: int) -> None:
    """Wait until every robot has `steps` more acknowledged steps than now."""
    targets = [r.acked + steps for r in robots]
    start = time.monotonic()
    while not (
        all(r.acked >= t for r, t in zip(robots, targets, strict=True))
        or any(r.error for r in robots)
    ):
        if time.monotonic() - start >= 60:
            raise AssertionError(f"not within 60s: {steps} more steps per robot")
        time.sleep(0.02)
    assert not [r.error for r in robots if r.error]


def check_nothing_lost_or_doubled(
    cluster: RunningCluster,
    stub: session_pb2_grpc.SessionServiceStub,
    robots: list[SteppingRobot],
    models: dict[str, ActionModel] | None = None,
) -> None:
    """Every step acknowledged once, in order, and its action that of the reference model of
    the version it ran on, over the session's whole history (a session that moved to another
    version had its state rebuilt on it by replay)."""
    if models is None:
        model, info = weights.load_model(cluster.weights_dir)
        models = {info.version: model}
    stored = {  # read first: computing the references below may outlast a session's TTL
        robot.session_id: stub.GetSession(
            session_pb2.GetSessionRequest(session_id=robot.session_id), timeout=5
        ).seq
        for robot in robots
        if robot.error is None
    }
    for robot in robots:
        assert robot.error is None, robot.error
        assert {o.code for o in robot.outcomes} <= {"OK", *RETRYABLE}
        ok = [o for o in robot.outcomes if o.code == "OK"]
        assert [o.seq for o in ok] == list(range(1, len(ok) + 1)), "a step was skipped or repeated"
        assert all(o.serve_mode == session_pb2.FULL for o in ok)
        assert stored[robot.session_id] == len(ok), (
            "the stored seq differs from the acknowledged steps"
        )
        assert not [o.seq for o in ok if o.state_reset], "a state was reset"
        for version in {o.model_version for o in ok}:
            assert version in models, f"a step ran on model {version}, not one of {list(models)}"
            want, _ = reference_run(models[version], robot.obs[: len(ok)])
            for o in ok:
                if o.model_version == version:
                    assert o.action is not None and torch.allclose(
                        o.action, want[o.seq - 1], atol=1e-5
                    ), f"seq {o.seq} on {version}"


def worst_latency_after(robots: list[SteppingRobot], t: float, window_s: float = 1.0) -> float:
    """The slowest answer among those that arrived within window_s after t."""
    return max(o.latency_s for r in robots for o in r.outcomes if t < o.at <= t + window_s)


def failed(robots: list[SteppingRobot]) -> list[str]:
    return [o.code for r in robots for o in r.outcomes if o.code != "OK"]
