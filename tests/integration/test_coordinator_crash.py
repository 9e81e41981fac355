"""kill -9 a coordinator mid-session: a new one on the same Redis continues at the right seq."""

from __future__ import annotations

import grpc
import torch

from chaos.reference import observations, open_session, reference_run, step, step_request
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec

STEPS, CRASH_AFTER = 20, 10


def test_session_survives_coordinator_kill(cluster: LocalCluster) -> None:
    obs = observations(42, STEPS, cluster.model.observation_dim)
    first = cluster.start_coordinator("coordinator-a", 0)
    actions: list[torch.Tensor] = []
    with grpc.insecure_channel(f"127.0.0.1:{first.ports['grpc_port']}") as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        sid = open_session(stub)
        for seq in range(1, CRASH_AFTER + 1):
            actions.append(tensor_codec.decode(step(stub, sid, seq, obs[seq - 1]).action))
        last = step(stub, sid, CRASH_AFTER, obs[CRASH_AFTER - 1])
    first.kill()
    assert first.returncode() is not None

    second = cluster.start_coordinator("coordinator-b", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{second.ports['grpc_port']}") as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
            assert info.seq == CRASH_AFTER
            # A robot that never saw the last reply resends it: it gets the stored reply back.
            again = stub.Step(step_request(sid, CRASH_AFTER, obs[CRASH_AFTER - 1]), timeout=10)
            assert again == last
            for seq in range(CRASH_AFTER + 1, STEPS + 1):
                actions.append(tensor_codec.decode(step(stub, sid, seq, obs[seq - 1]).action))
    finally:
        second.stop()

    model, _ = weights.load_model(cluster.weights_dir)
    want, _ = reference_run(model, obs)
    for seq, (got, ref) in enumerate(zip(actions, want, strict=True), start=1):
        assert torch.allclose(got, ref, atol=1e-5), f"seq {seq} differs from the uninterrupted run"
