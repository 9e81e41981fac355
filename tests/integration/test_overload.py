"""Overload: more steps than the coordinator admits, from clients of mixed priorities.
BEST_EFFORT is shed first, with RESOURCE_EXHAUSTED and a retry hint; SAFETY is never shed.
How fast each class is served is the bench's business, not asserted here."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from actionmesh_client.proto_names import priority_name
from chaos.reference import observations
from service.coordinator.error_status import ERROR_KEY, RETRY_AFTER_KEY
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from tests.conftest import SMALL_MODEL, cluster_settings

PRIORITIES = (
    session_pb2.PRIORITY_SAFETY,
    session_pb2.PRIORITY_NORMAL,
    session_pb2.PRIORITY_BEST_EFFORT,
)
# 9 closed-loop clients against 2 slots + 2 queue places: ~2x. One SAFETY client: with as
# many SAFETY clients as the others, SAFETY (exempt from the queue bound) takes nearly all
# capacity and what NORMAL and BEST_EFFORT get is noise, not priority.
CLIENTS = {
    session_pb2.PRIORITY_SAFETY: 1,
    session_pb2.PRIORITY_NORMAL: 4,
    session_pb2.PRIORITY_BEST_EFFORT: 4,
}
RUN_S = 6.0


class Client(threading.Thread):
    """Steps one session as fast as answers come; a shed step is retried after its hint."""

    def __init__(self, stub: session_pb2_grpc.SessionServiceStub, priority: int, i: int) -> None:
        super().__init__(daemon=True)
        self.stub, self.priority = stub, priority
        opened = stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id=f"client-{priority}-{i}"), timeout=10
        )
        self.session_id = opened.session_id
        self.obs = observations(100 * priority + i, 10_000, SMALL_MODEL.observation_dim)
        self.codes: Counter[str] = Counter()
        self.hints: list[float] = []
        self.reasons: set[str] = set()
        self.stop_at = time.monotonic() + RUN_S

    def run(self) -> None:
        seq = 1
        while time.monotonic() < self.stop_at:
            request = session_pb2.StepRequest(
                session_id=self.session_id,
                seq=seq,
                observation=tensor_codec.encode(self.obs[seq - 1]),
                priority=self.priority,
            )
            try:
                self.stub.Step(request, timeout=1.0)
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                self.codes[exc.code().name] += 1
                trailers = dict(exc.trailing_metadata() or ())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.reasons.add(str(trailers.get(ERROR_KEY)))
                    hint = float(str(trailers[RETRY_AFTER_KEY]))
                    self.hints.append(hint)
                    time.sleep(hint)
                continue
            self.codes["OK"] += 1
            seq += 1


def test_best_effort_is_shed_first_and_safety_never(tmp_path: Path) -> None:
    admission = {"admission_max_inflight": 2, "admission_max_queue": 2}
    with (
        LocalCluster(
            cluster_settings(tmp_path), SMALL_MODEL, coordinator_overrides=admission
        ) as cluster,
        grpc.insecure_channel(cluster.address) as channel,
    ):
        stub = session_pb2_grpc.SessionServiceStub(channel)
        clients = [Client(stub, p, i) for p in PRIORITIES for i in range(CLIENTS[p])]
        for client in clients:
            client.start()
        for client in clients:
            client.join(RUN_S + 30)
    by_priority = {p: Counter[str]() for p in PRIORITIES}
    for client in clients:
        by_priority[client.priority].update(client.codes)
    print({priority_name(p): dict(c) for p, c in by_priority.items()})
    safety, normal, best_effort = (by_priority[p] for p in PRIORITIES)
    assert safety["RESOURCE_EXHAUSTED"] == 0 and safety["OK"] > 0
    assert best_effort["RESOURCE_EXHAUSTED"] > 0, "no overload: the test did not test anything"

    def shed_rate(codes: Counter[str]) -> float:
        return codes["RESOURCE_EXHAUSTED"] / max(1, sum(codes.values()))

    assert shed_rate(best_effort) >= shed_rate(normal)
    shed_clients = [c for c in clients if c.hints]
    assert all(h > 0 for c in shed_clients for h in c.hints)
    assert {r for c in shed_clients for r in c.reasons} == {"shed"}
    assert set().union(*(c.codes for c in clients)) <= {"OK", "RESOURCE_EXHAUSTED"}
