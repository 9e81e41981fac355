"""Lagging stage states are replayed level from the observation log; racing coordinators
commit a step once."""

from __future__ import annotations

import threading

import grpc
import torch

from chaos.reference import observations, open_session, reference_run, step, step_request
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from state.redis_store import RedisSessionStore
from state.session import SessionId, StageIndex, StageState, StepCommit
from tests.support.scraping import scrape

LOG_DEPTH = 64  # the coordinator's default observation_log_depth


def lag_last_stage(
    cluster: LocalCluster,
    model: ActionModel,
    sid: str,
    obs: list[torch.Tensor],
    start: int,
    steps: int,
) -> None:
    """Commit `steps` steps after `start` through the state module's own API, as a degraded
    answer would: stages 0..K-2 advance (computed in-process), the last stage does not."""
    store = RedisSessionStore(cluster.redis_url, socket_timeout_s=2.0)
    record = store.load(SessionId(sid))
    assert record is not None and record.seq == start
    n = model.cfg.n_stages
    states = [
        tensor_codec.from_bytes(record.stage_states[StageIndex(k)].data).unsqueeze(0)
        for k in range(n)
    ]
    x: torch.Tensor
    for seq in range(start + 1, start + steps + 1):
        x = obs[seq - 1].unsqueeze(0)
        advanced = {}
        with torch.no_grad():
            for k in range(n - 1):
                x, states[k] = model.stage(k)(x, states[k])
                advanced[StageIndex(k)] = StageState(seq, tensor_codec.to_bytes(states[k][0]))
        commit = StepCommit(
            seq - 1,
            seq,
            advanced,
            b"degraded",
            record.ttl_s,
            n,
            tensor_codec.to_bytes(obs[seq - 1]),
            LOG_DEPTH,
        )
        assert store.commit(SessionId(sid), commit).status.value == "committed"
    store.close()


def coordinator_metric(cluster: LocalCluster, name: str) -> float:
    assert cluster.coordinator is not None
    return scrape(cluster.coordinator.ports["metrics_port"]).total(name)


def test_lagging_stage_is_replayed_to_equal_a_never_failed_run(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    model, _ = weights.load_model(cluster.weights_dir)
    obs = observations(11, 45, cluster.model.observation_dim)
    sid = open_session(stub)
    actions = [tensor_codec.decode(step(stub, sid, s, obs[s - 1]).action) for s in range(1, 31)]
    lag_last_stage(cluster, model, sid, obs, start=30, steps=10)
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
    assert [s.seq for s in info.stage_states] == [40, 40, 30]
    assert info.observation_log_depth == 40
    replayed_before = coordinator_metric(cluster, "actionmesh_replayed_steps_total")

    reply = step(stub, sid, 41, obs[40])
    assert reply.replayed_steps == 10 and not reply.state_reset
    later = [tensor_codec.decode(step(stub, sid, s, obs[s - 1]).action) for s in range(42, 46)]

    want, want_states = reference_run(model, obs)
    served = dict(zip(range(1, 31), actions, strict=True))
    served[41] = tensor_codec.decode(reply.action)
    served.update(zip(range(42, 46), later, strict=True))
    for seq, got in served.items():
        assert torch.allclose(got, want[seq - 1], atol=1e-5), f"seq {seq} differs"
    store = RedisSessionStore(cluster.redis_url, socket_timeout_s=2.0)
    record = store.load(SessionId(sid))
    store.close()
    assert record is not None and record.anchor is None
    for k, want_state in enumerate(want_states):
        got = tensor_codec.from_bytes(record.stage_states[StageIndex(k)].data)
        assert torch.allclose(got, want_state, atol=1e-5), f"stage {k} state differs"
    assert coordinator_metric(cluster, "actionmesh_replayed_steps_total") == replayed_before + 10


def test_log_too_short_resets_the_state_and_says_so(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    model, _ = weights.load_model(cluster.weights_dir)
    lag = LOG_DEPTH + 6
    obs = observations(12, 5 + lag + 1, cluster.model.observation_dim)
    sid = open_session(stub)
    for s in range(1, 6):
        step(stub, sid, s, obs[s - 1])
    lag_last_stage(cluster, model, sid, obs, start=5, steps=lag)
    resets_before = coordinator_metric(cluster, "actionmesh_state_resets_total")

    seq = 5 + lag + 1
    reply = step(stub, sid, seq, obs[seq - 1])
    assert reply.state_reset and reply.replayed_steps == 0
    fresh, _ = reference_run(model, [obs[seq - 1]])  # one step from fresh states
    assert torch.allclose(tensor_codec.decode(reply.action), fresh[0], atol=1e-5)
    assert coordinator_metric(cluster, "actionmesh_state_resets_total") == resets_before + 1
    nxt = step(stub, sid, seq + 1, obs[0])
    assert not nxt.state_reset and nxt.replayed_steps == 0


def race(
    stubs: list[session_pb2_grpc.SessionServiceStub], request: session_pb2.StepRequest
) -> list[bytes]:
    """Send the same step through every stub at once; the serialized replies."""
    barrier = threading.Barrier(len(stubs))
    got = [b""] * len(stubs)

    def send(i: int) -> None:
        barrier.wait()
        got[i] = stubs[i].Step(request, timeout=10).SerializeToString(deterministic=True)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(stubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return got


def test_two_coordinators_racing_on_a_seq_commit_once(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    other = cluster.start_coordinator("coordinator-race", 0)
    rounds = 15
    obs = observations(13, rounds, cluster.model.observation_dim)
    sid = open_session(stub)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{other.ports['grpc_port']}") as channel:
            stubs = [stub, session_pb2_grpc.SessionServiceStub(channel)]
            for seq in range(1, rounds + 1):
                got = race(stubs, step_request(sid, seq, obs[seq - 1]))
                assert got[0] and got[0] == got[1], f"seq {seq}: the two replies differ"
    finally:
        other.stop()
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), timeout=5)
    assert info.seq == rounds
    assert info.observation_log_depth == rounds, "a step was committed (and logged) twice"
    model, _ = weights.load_model(cluster.weights_dir)
    _, want_states = reference_run(model, obs)
    store = RedisSessionStore(cluster.redis_url, socket_timeout_s=2.0)
    record = store.load(SessionId(sid))
    store.close()
    assert record is not None
    for k, want_state in enumerate(want_states):
        got_state = tensor_codec.from_bytes(record.stage_states[StageIndex(k)].data)
        assert torch.allclose(got_state, want_state, atol=1e-5), f"stage {k} applied twice?"
