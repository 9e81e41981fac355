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

from actionmesh_client.proto_names import serve_mode_name
from chaos.fleet import RETRYABLE, ClientRobot, Robot, SteppingRobot
from chaos.reference import observations, reference_with_exits
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2, session_pb2_grpc

ROBOTS, PERIOD_S, MAX_STEPS = 4, 0.02, 3000
# What failure_report quotes of the coordinators' logs: lines about refused or degraded steps.
REPORTED_LOG_WORDS = ('"WARNING"', '"ERROR"', "DEADLINE_EXCEEDED", "UNAVAILABLE")
REPORTED_LOG_LINES, REPORTED_LOG_LINE_CHARS = 30, 400


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
    degraded: bool = False,
    client_library: bool = False,
    robots: int = ROBOTS,
    streaming: bool | None = None,
) -> Iterator[list[Robot]]:
    """`robots` robots, streaming or unary as `streaming` says (None: every other one
    streaming). models: the reference of every version the steps may run on (default: the
    cluster's); check=False leaves the checks of the answers to the caller; degraded: labelled
    degraded answers pass the check (see check_nothing_lost_or_doubled). client_library:
    ClientRobots (the client library, with its default step timeout) rather than
    SteppingRobots (raw stubs); they cannot ask for wait_replicas."""
    dim = cluster.model.observation_dim
    assert not (client_library and wait_replicas), "ClientRobot opens plain sessions"
    with grpc.insecure_channel(cluster.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        fleet: list[Robot] = [
            ClientRobot(cluster.address, observations(i, MAX_STEPS, dim), period_s, streams)
            if client_library
            else SteppingRobot(
                stub,
                observations(i, MAX_STEPS, dim),
                period_s,
                streaming=streams,
                wait_replicas=wait_replicas,
            )
            for i in range(robots)
            for streams in [i % 2 == 0 if streaming is None else streaming]
        ]
        for robot in fleet:
            robot.start()
        try:
            yield fleet
        finally:
            for robot in fleet:
                robot.stop()
            for robot in fleet:
                robot.join(timeout=30)
        if check:
            check_nothing_lost_or_doubled(cluster, stub, fleet, models, degraded)


def progress(robots: list[Robot], steps: int) -> None:
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
    robots: list[Robot],
    models: dict[str, ActionModel] | None = None,
    degraded: bool = False,
) -> None:
    """Every step acknowledged once, in order, and its action that of the reference model of
    the version it ran on, over the session's whole history (a session that moved to another
    version had its state rebuilt on it by replay).

    Every answer is FULL, unless `degraded`: then an EARLY_EXIT answer must equal its
    version's exit head at its exit stage (the earlier stages were level) and a FALLBACK
    answer (the student's, not reproduced here) must have the action's shape."""
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
    modes = (
        {
            session_pb2.SERVE_MODE_FULL,
            session_pb2.SERVE_MODE_EARLY_EXIT,
            session_pb2.SERVE_MODE_FALLBACK,
        }
        if degraded
        else {session_pb2.SERVE_MODE_FULL}
    )
    for robot in robots:
        assert robot.error is None, robot.error
        assert {o.code for o in robot.outcomes} <= {"OK", *RETRYABLE}
        ok = [o for o in robot.outcomes if o.code == "OK"]
        assert [o.seq for o in ok] == list(range(1, len(ok) + 1)), "a step was skipped or repeated"
        unlabelled = [(o.seq, o.serve_mode) for o in ok if o.serve_mode not in modes]
        assert not unlabelled, f"answers not labelled {sorted(modes)}: (seq, mode) {unlabelled}"
        assert stored[robot.session_id] == len(ok), (
            "the stored seq differs from the acknowledged steps"
        )
        assert not [o.seq for o in ok if o.state_reset], "a state was reset"
        for version in {o.model_version for o in ok}:
            assert version in models, f"a step ran on model {version}, not one of {list(models)}"
            model = models[version]
            full, exits = reference_with_exits(model, robot.obs[: len(ok)])
            for o in ok:
                if o.model_version != version:
                    continue
                assert o.action is not None
                if o.serve_mode == session_pb2.SERVE_MODE_FULL:
                    want = full[o.seq - 1]
                elif o.serve_mode == session_pb2.SERVE_MODE_EARLY_EXIT:
                    want = exits[o.seq - 1][o.exit_stage]
                else:
                    assert list(o.action.shape) == [model.cfg.horizon, model.cfg.joints]
                    continue
                assert torch.allclose(o.action, want, atol=1e-5), (
                    f"seq {o.seq} ({serve_mode_name(o.serve_mode)}) on {version}"
                )


def step_latencies(robot: Robot) -> list[tuple[float, float]]:
    """(answered at, latency) of every acknowledged step, its latency measured from the first
    attempt's sending to the answer: what the robot waited for that action, retries included."""
    out, first_sent = [], None
    for o in robot.outcomes:
        sent = o.at - o.latency_s
        first_sent = sent if first_sent is None else first_sent
        if o.code == "OK":
            out.append((o.at, o.at - first_sent))
            first_sent = None
    return out


def worst_step_latency_after(robots: list[Robot], t: float) -> float:
    """The longest a robot waited for an action answered after t (retries included)."""
    return max(latency for r in robots for at, latency in step_latencies(r) if at > t)


def check_failures_at(
    robots: list[Robot], fault_at: float, window_s: float = 1.0, per_robot: int = 1
) -> None:
    """At most `per_robot` failed attempts per robot, each one answered after the fault and
    sent no later than window_s after it (a step in flight at the fault, or sent just after)."""
    for robot in robots:
        fails = [o for o in robot.outcomes if o.code != "OK"]
        where = [(o.seq, o.code, round(o.at - o.latency_s - fault_at, 3)) for o in fails]
        assert len(fails) <= per_robot, (
            f"session {robot.session_id}: {len(fails)} failed steps (seq, code, sent s after "
            f"the fault): {where}"
        )
        assert all(fault_at <= o.at and o.at - o.latency_s <= fault_at + window_s for o in fails), (
            f"session {robot.session_id}: a step failed outside the fault's window of {window_s} "
            f"s (seq, code, sent s after the fault): {where}"
        )


def worst_latency_after(robots: list[Robot], t: float, window_s: float = 1.0) -> float:
    """The slowest answer among those that arrived within window_s after t."""
    return max(o.latency_s for r in robots for o in r.outcomes if t < o.at <= t + window_s)


def failed(robots: list[Robot]) -> list[str]:
    return [o.code for r in robots for o in r.outcomes if o.code != "OK"]


def failure_report(robots: list[Robot], log_dir: Path | None = None) -> str:
    """Every failed attempt, a line each: which robot and seq, its code, how long it took and
    what the server said (a client-side deadline says "Deadline Exceeded"). With the
    cluster's `log_dir`, also the coordinators' last lines about refused or degraded steps,
    so that a failure seen once in CI says whether the coordinator answered it and why."""
    lines = [
        f"robot {i} seq {o.seq} {o.code} after {o.latency_s:.3f} s: {o.detail}"
        for i, r in enumerate(robots)
        for o in r.outcomes
        if o.code != "OK"
    ]
    if lines and log_dir is not None:
        for log in sorted(log_dir.glob("coordinator*.log")):
            told = [
                line[:REPORTED_LOG_LINE_CHARS]
                for line in log.read_text(errors="replace").splitlines()
                if any(word in line for word in REPORTED_LOG_WORDS)
            ]
            lines += [f"{log.name}, last {REPORTED_LOG_LINES} of {len(told)} lines about steps:"]
            lines += told[-REPORTED_LOG_LINES:]
    return "\n".join(lines)
