"""A coordinator's stop on SIGTERM: it drains first (NOT_SERVING, no new session, the open
session's steps answered with the time left), then closes its store and etcd cleanly, logs
that it stopped, and exits 0 within drain_delay_s + shutdown_grace_s + 2 s, without the
interpreter's teardown (seconds: docs/chaos.md). Prints each measured stop time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
import torch

from chaos.reference import step_request
from service.coordinator.error_status import ERROR_KEY
from service.coordinator.session_servicer import DRAINING_KEY
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_health import NOT_SERVING, SESSION_SERVICE, health_of
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

DRAIN_S = 2.0  # long enough to ask it three things while it drains
GRACE_S = 2.0
BOUND_S = DRAIN_S + GRACE_S + 2.0
ROUNDS = 2


def test_a_coordinator_drains_on_sigterm_then_exits_promptly(tmp_path: Path) -> None:
    obs = torch.zeros(SMALL_MODEL.observation_dim)
    took: list[float] = []
    with LocalCluster(cluster_settings(tmp_path), SMALL_MODEL) as cluster:
        for round_ in range(ROUNDS):
            child = cluster.start_coordinator(
                f"coordinator-stopping-{round_}",
                0,
                "--drain-delay-s",
                str(DRAIN_S),
                "--shutdown-grace-s",
                str(GRACE_S),
            )
            port = child.ports["grpc_port"]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)
                opened = stub.OpenSession(
                    session_pb2.OpenSessionRequest(client_id="robot"), timeout=10
                )
                stub.Step(step_request(opened.session_id, 1, obs), timeout=10)
                start = time.monotonic()
                child.terminate()
                wait_for(lambda p=port: health_of(p, SESSION_SERVICE) == NOT_SERVING, 2, "drain")
                with pytest.raises(grpc.RpcError) as refused:
                    stub.OpenSession(session_pb2.OpenSessionRequest(client_id="late"), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                trailers = dict(refused.value.trailing_metadata() or ())  # type: ignore[attr-defined]
                assert trailers[ERROR_KEY] == "draining"
                _, call = stub.Step.with_call(step_request(opened.session_id, 2, obs), timeout=5)
                assert DRAINING_KEY in dict(call.trailing_metadata() or ())
            wait_for(lambda c=child: c.returncode() is not None, BOUND_S + 10, "the exit")
            took.append(time.monotonic() - start)
            print(f"\nround {round_}: SIGTERM -> exit {took[-1]:.2f}s (drain {DRAIN_S}s)")
            assert child.returncode() == 0, "ended by its stop limit or a failure, not a clean stop"
            last = child.log_path.read_text().splitlines()[-1]
            assert json.loads(last)["msg"] == "coordinator stopped"  # flushed before the exit
            assert took[-1] < BOUND_S, f"stopped in {took[-1]:.2f}s, over {BOUND_S}s"
