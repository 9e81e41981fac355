"""`actionmesh bench`: in-process against cluster step latency, and throughput, in one run."""

from __future__ import annotations

import json
import threading
import time

import grpc
import torch

from chaos.robot_sim import SimulatedArm
from service.bench import shard_footprint
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime.settings import BenchSettings

_WARMUP_STEPS = 10


def inprocess_latencies(settings: BenchSettings, cluster: LocalCluster) -> list[float]:
    """The same weights and thread count as one shard, all stages in this process."""
    torch.set_num_threads(settings.torch_threads)
    model, _ = weights.load_model(cluster.weights_dir)
    cfg = model.cfg
    arm = SimulatedArm(cfg.observation_dim, cfg.joints, seed=settings.seed)
    states = model.fresh_states(1)
    samples = []
    for i in range(_WARMUP_STEPS + settings.steps):
        obs = arm.observation()
        started = time.perf_counter()
        action, states = model.step(obs.unsqueeze(0), states)
        if i >= _WARMUP_STEPS:
            samples.append(time.perf_counter() - started)
        arm.apply(action[0], 0.02)
    return samples


def cluster_latencies(
    stub: session_pb2_grpc.SessionServiceStub, settings: BenchSettings
) -> list[float]:
    """Unary Step round trips of one session, as a robot sees them."""
    opened = stub.OpenSession(
        session_pb2.OpenSessionRequest(client_id="bench", wait_replicas=settings.wait_replicas),
        timeout=10,
    )
    spec = opened.action_spec
    arm = SimulatedArm(spec.observation_dim, spec.joints, seed=settings.seed)
    samples = []
    for seq in range(1, _WARMUP_STEPS + settings.steps + 1):
        request = session_pb2.StepRequest(
            session_id=opened.session_id,
            seq=seq,
            observation=tensor_codec.encode(arm.observation()),
        )
        started = time.perf_counter()
        reply = stub.Step(request, timeout=10)
        if seq > _WARMUP_STEPS:
            samples.append(time.perf_counter() - started)
        arm.apply(tensor_codec.decode(reply.action), 0.02)
    stub.CloseSession(session_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=5)
    return samples


def throughput(
    stub: session_pb2_grpc.SessionServiceStub, sessions: int, duration_s: float, wait_replicas: int
) -> float:
    """Steps/s with `sessions` robots each stepping back to back for duration_s."""
    counts = [0] * sessions
    stop_at = time.monotonic() + duration_s

    def robot(i: int) -> None:
        opened = stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id=f"bench-{i}", wait_replicas=wait_replicas),
            timeout=10,
        )
        spec = opened.action_spec
        arm = SimulatedArm(spec.observation_dim, spec.joints, seed=i)
        seq = 0
        while time.monotonic() < stop_at:
            seq += 1
            obs = tensor_codec.encode(arm.observation())
            reply = stub.Step(
                session_pb2.StepRequest(session_id=opened.session_id, seq=seq, observation=obs),
                timeout=10,
            )
            arm.apply(tensor_codec.decode(reply.action), 0.02)
            counts[i] += 1
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=5)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(sessions)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def run(settings: BenchSettings) -> dict[str, object]:
    with LocalCluster(settings) as cluster:
        inproc = inprocess_latencies(settings, cluster)
        with grpc.insecure_channel(cluster.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            remote = cluster_latencies(stub, settings)
            rates = {
                str(c): round(throughput(stub, c, settings.throughput_s, settings.wait_replicas), 1)
                for c in settings.concurrency
            }
        # On the cluster's (now idle) machine: one shard of each runtime at a time.
        footprint = shard_footprint.measure(
            cluster.model, settings.torch_threads, cluster.work_dir / "footprint"
        )
    in_p50, cl_p50 = percentile_ms(inproc, 50), percentile_ms(remote, 50)
    result: dict[str, object] = {
        "stages": cluster.model.n_stages,
        "redis_durability": settings.redis_durability,
        "wait_replicas": settings.wait_replicas,
        "torch_threads_per_shard": settings.torch_threads,
        "steps": settings.steps,
        "inprocess_p50_ms": round(in_p50, 3),
        "inprocess_p99_ms": round(percentile_ms(inproc, 99), 3),
        "cluster_p50_ms": round(cl_p50, 3),
        "cluster_p99_ms": round(percentile_ms(remote, 99), 3),
        "overhead_p50_ms": round(cl_p50 - in_p50, 3),
        "ratio_p50": round(cl_p50 / in_p50, 3) if in_p50 else None,
        "steps_per_s": rates,
        "shard_runtime": settings.runtime,
        **footprint,
    }
    return result


def print_table(result: dict[str, object]) -> None:
    print(
        f"stages={result['stages']} torch_threads/shard={result['torch_threads_per_shard']} steps={result['steps']}"
    )
    print(f"{'':<12} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"{'in-process':<12} {result['inprocess_p50_ms']:>9} {result['inprocess_p99_ms']:>9}")
    print(f"{'cluster':<12} {result['cluster_p50_ms']:>9} {result['cluster_p99_ms']:>9}")
    print(f"overhead p50 {result['overhead_p50_ms']} ms, ratio {result['ratio_p50']}")
    rates = result["steps_per_s"]
    assert isinstance(rates, dict)
    for sessions, rate in rates.items():
        print(f"{sessions:>3} concurrent sessions: {rate} steps/s")
    shard_footprint.print_table(result)


def main(settings: BenchSettings) -> int:
    if settings.failover:
        from service.bench import failover

        result = failover.run(settings)
        show = failover.print_table
    elif settings.degraded:
        from service.bench import degraded_modes

        result = degraded_modes.run(settings)
        show = degraded_modes.print_table
    else:
        result, show = run(settings), print_table
    if settings.json_output:
        print(json.dumps(result))
    else:
        show(result)
    return 0
