"""Two coordinator processes on one Redis take turns serving one session. Each keeps the
record it committed last (its session cache); the seq-conditional commit must stop either
from ever committing on a record the other has moved on."""

from __future__ import annotations

import grpc
import redis
import torch

from chaos.reference import observations, open_session, reference_run, step, step_request
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec

STEPS = 18


def session_loads(client: redis.Redis) -> int:
    """HGETALL calls so far: the coordinator's only way to load a session."""
    stats = client.info("commandstats").get("cmdstat_hgetall", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_coordinators_taking_turns_answer_like_one_and_never_apply_a_seq_twice(
    cluster: LocalCluster,
) -> None:
    obs = observations(7, STEPS, cluster.model.observation_dim)
    other = cluster.start_coordinator("coordinator-b", 0)
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        with (
            grpc.insecure_channel(cluster.address) as a_channel,
            grpc.insecure_channel(f"127.0.0.1:{other.ports['grpc_port']}") as b_channel,
        ):
            a = session_pb2_grpc.SessionServiceStub(a_channel)
            b = session_pb2_grpc.SessionServiceStub(b_channel)
            sid = open_session(a)
            actions: list[torch.Tensor] = []
            for seq in range(1, STEPS + 1):  # A, A, B, A, A, B, ...
                on_b = seq % 3 == 0
                loads = session_loads(client)
                reply = step(b if on_b else a, sid, seq, obs[seq - 1])
                assert reply.seq == seq and reply.serve_mode == session_pb2.SERVE_MODE_FULL
                if seq % 3 == 2:
                    assert session_loads(client) == loads, "A's next step after its own commit"
                actions.append(tensor_codec.decode(reply.action))
                if on_b:  # A's cached record is one behind: a resend to A gets B's reply
                    again = a.Step(step_request(sid, seq, obs[seq - 1]), timeout=10)
                    assert again == reply
            info = b.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
            assert info.seq == STEPS and info.observation_log_depth == STEPS
    finally:
        client.close()
        other.stop()
    model, _ = weights.load_model(cluster.weights_dir)
    want, _ = reference_run(model, obs)
    for seq, (got, ref) in enumerate(zip(actions, want, strict=True), start=1):
        assert torch.allclose(got, ref, atol=1e-5), f"seq {seq} differs from one uninterrupted run"
