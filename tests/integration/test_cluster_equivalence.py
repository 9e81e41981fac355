"""The cluster computes what the model computes in-process, batched or not, whichever runtime
its shards run the stages on (torch, or ONNX Runtime on the exported graphs)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
import torch

from chaos.reference import observations, open_session, reference_run, step
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec, tensor_pb2
from state.redis_store import RedisSessionStore
from state.session import SessionId, StageIndex
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.process_maps import loads_onnxruntime, loads_torch

SESSIONS, STEPS = 3, 50
ATOL = 1e-5


@pytest.fixture(scope="module", params=["torch", "onnx"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """conftest's cluster, once per shard runtime."""
    work_dir = tmp_path_factory.mktemp(f"cluster-{request.param}")
    settings = cluster_settings(work_dir, runtime=request.param)
    with LocalCluster(settings, model=SMALL_MODEL) as running:
        onnx = request.param == "onnx"
        for shard in running.shards:  # the runtime asked for, seen from outside the process
            assert (loads_onnxruntime(shard.pid), loads_torch(shard.pid)) == (onnx, not onnx)
        yield running


def stored_states(cluster: LocalCluster, session_id: str) -> list[torch.Tensor]:
    store = RedisSessionStore(cluster.redis_url, socket_timeout_s=2.0)
    record = store.load(SessionId(session_id))
    store.close()
    assert record is not None
    return [
        tensor_codec.decode(tensor_pb2.Tensor.FromString(record.stage_states[StageIndex(k)].data))
        for k in range(cluster.model.n_stages)
    ]


def check_against_reference(
    cluster: LocalCluster, session_id: str, obs: list[torch.Tensor], actions: list[torch.Tensor]
) -> None:
    model, _ = weights.load_model(cluster.weights_dir)
    want_actions, want_states = reference_run(model, obs)
    for seq, (got, want) in enumerate(zip(actions, want_actions, strict=True), start=1):
        assert torch.allclose(got, want, atol=ATOL), f"session={session_id} seq={seq} differs"
    for k, (got, want) in enumerate(
        zip(stored_states(cluster, session_id), want_states, strict=True)
    ):
        assert torch.allclose(got, want, atol=ATOL), f"session={session_id} stage {k} state differs"


def step_retrying_late(
    stub: session_pb2_grpc.SessionServiceStub,
    session_id: str,
    seq: int,
    obs: torch.Tensor,
    retried: list[int],
) -> session_pb2.StepReply:
    """A step, resent with the same seq after DEADLINE_EXCEEDED (at most twice), as the step
    contract tells a robot: a stall of this shared machine past the coordinator's 2 s is not
    what the equivalence is about, and the retry must still give the same answer."""
    for _ in range(2):
        try:
            return step(stub, session_id, seq, obs)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            retried.append(seq)
    return step(stub, session_id, seq, obs)


def test_interleaved_sessions_match_in_process(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    dim = cluster.model.observation_dim
    sessions = [open_session(stub) for _ in range(SESSIONS)]
    obs = {sid: observations(i, STEPS, dim) for i, sid in enumerate(sessions)}
    actions: dict[str, list[torch.Tensor]] = {sid: [] for sid in sessions}
    for seq in range(1, STEPS + 1):
        for sid in sessions:
            reply = step(stub, sid, seq, obs[sid][seq - 1])
            assert reply.seq == seq and reply.serve_mode == 1  # FULL
            actions[sid].append(tensor_codec.decode(reply.action))
    for sid in sessions:
        check_against_reference(cluster, sid, obs[sid], actions[sid])


def test_concurrent_sessions_batched_match_in_process(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub
) -> None:
    dim = cluster.model.observation_dim
    robots = 6
    sessions = [open_session(stub) for _ in range(robots)]
    obs = {sid: observations(100 + i, STEPS, dim) for i, sid in enumerate(sessions)}
    actions: dict[str, list[torch.Tensor]] = {sid: [] for sid in sessions}
    batch_sizes: list[int] = []
    errors: list[BaseException] = []

    retried: list[int] = []

    def robot(sid: str) -> None:
        try:
            for seq in range(1, STEPS + 1):
                reply = step_retrying_late(stub, sid, seq, obs[sid][seq - 1], retried)
                actions[sid].append(tensor_codec.decode(reply.action))
                batch_sizes.append(reply.batch_size)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=robot, args=(sid,)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    print(f"steps resent after DEADLINE_EXCEEDED: {len(retried)}")
    if max(batch_sizes) < 2:
        pytest.fail(f"no step was batched with another; batch sizes {sorted(set(batch_sizes))}")
    for sid in sessions:
        check_against_reference(cluster, sid, obs[sid], actions[sid])
