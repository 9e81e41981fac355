"""`actionmesh bench`: in-process against cluster step latency, and throughput, in one run."""

from __future__ import annotations

import json
import queue
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import torch

from chaos.robot_sim import SimulatedArm
from service.bench import overhead, shard_footprint, tls_cost
from service.bench.latency import percentile_ms
from service.bench.overhead import TIMING_METADATA, StepSample
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime.command_settings import BenchSettings

_WARMUP_STEPS = 10


@torch.no_grad()
def inprocess_latencies(
    settings: BenchSettings, cluster: LocalCluster, idle_s: float = 0.0
) -> tuple[list[float], list[list[float]]]:
    """The same weights and thread count as one shard, all stages in this process: each step's
    time, and each stage's (the model's step, timed stage by stage).

    idle_s: sleep that long before each step, as a shard waits between its calls while the
    rest of the cluster works; a stage's weights (some MiB) leave the CPU caches meanwhile, and
    its next compute is slower than back to back."""
    torch.set_num_threads(settings.torch_threads)
    model, _ = weights.load_model(cluster.weights_dir)
    cfg = model.cfg
    arm = SimulatedArm(cfg.observation_dim, cfg.joints, seed=settings.seed)
    states = model.fresh_states(1)
    totals: list[float] = []
    per_stage: list[list[float]] = [[] for _ in range(cfg.n_stages)]
    for i in range(_WARMUP_STEPS + settings.steps):
        if idle_s:
            time.sleep(idle_s)
        x, took = arm.observation().unsqueeze(0), []
        for k in range(cfg.n_stages):
            started = time.perf_counter()
            x, states[k] = model.stage(k)(x, states[k])
            if k == cfg.n_stages - 1:
                x = model.stage(k).action(x)
            took.append(time.perf_counter() - started)
        if i >= _WARMUP_STEPS:
            totals.append(sum(took))
            for k, t in enumerate(took):
                per_stage[k].append(t)
        arm.apply(x[0], 0.02)
    return totals, per_stage


@contextmanager
def bench_session(
    stub: session_pb2_grpc.SessionServiceStub, settings: BenchSettings
) -> Iterator[tuple[str, SimulatedArm]]:
    """A session and the arm that steps it; closed at the end."""
    opened = stub.OpenSession(
        session_pb2.OpenSessionRequest(client_id="bench", wait_replicas=settings.wait_replicas),
        timeout=10,
    )
    spec = opened.action_spec
    try:
        yield opened.session_id, SimulatedArm(spec.observation_dim, spec.joints, seed=settings.seed)
    finally:
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=5)


def _request(session_id: str, seq: int, arm: SimulatedArm) -> session_pb2.StepRequest:
    observation = tensor_codec.encode(arm.observation())
    return session_pb2.StepRequest(session_id=session_id, seq=seq, observation=observation)


def cluster_latencies(
    stub: session_pb2_grpc.SessionServiceStub, settings: BenchSettings
) -> list[StepSample]:
    """Unary Step round trips of one session, as a robot sees them, with the coordinator's
    account of each."""
    samples = []
    with bench_session(stub, settings) as (session_id, arm):
        for seq in range(1, _WARMUP_STEPS + settings.steps + 1):
            request = _request(session_id, seq, arm)
            started = time.perf_counter()
            reply, call = stub.Step.with_call(request, timeout=10, metadata=TIMING_METADATA)
            if seq > _WARMUP_STEPS:
                samples.append(StepSample.of(time.perf_counter() - started, reply, call))
            arm.apply(tensor_codec.decode(reply.action), 0.02)
    return samples


def stream_latencies(
    stub: session_pb2_grpc.SessionServiceStub, settings: BenchSettings
) -> list[float]:
    """The same steps over one StreamSteps call (how the client library's robots step)."""
    samples = []
    requests: queue.SimpleQueue[session_pb2.StepRequest | None] = queue.SimpleQueue()
    with bench_session(stub, settings) as (session_id, arm):
        replies = stub.StreamSteps(iter(requests.get, None), timeout=600)
        try:
            for seq in range(1, _WARMUP_STEPS + settings.steps + 1):
                request = _request(session_id, seq, arm)
                started = time.perf_counter()
                requests.put(request)
                item = next(replies)
                if seq > _WARMUP_STEPS:
                    samples.append(time.perf_counter() - started)
                arm.apply(tensor_codec.decode(item.reply.action), 0.02)
        finally:
            requests.put(None)
            replies.cancel()
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
    """--tls measures a TLS twin of the cluster beside it (tls_cost); the cluster measured for
    every other key stays plaintext."""
    plain = settings.model_copy(update={"tls": False, "tls_dir": None})
    tls: dict[str, float] = {}
    with LocalCluster(plain) as cluster:
        inproc, inproc_stages = inprocess_latencies(settings, cluster)
        with grpc.insecure_channel(cluster.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            samples = cluster_latencies(stub, settings)
            streamed = stream_latencies(stub, settings)
            rates = {
                str(c): round(throughput(stub, c, settings.throughput_s, settings.wait_replicas), 1)
                for c in settings.concurrency
            }
            if settings.tls:
                tls = tls_cost.measure(settings, stub)
        # Each stage again, idle between steps as long as a step spends beyond the compute.
        idle_s = max(
            0.0,
            statistics.median(s.round_trip_ms for s in samples) / 1e3 - statistics.median(inproc),
        )
        _, idle_stages = inprocess_latencies(settings, cluster, idle_s)
        # On the cluster's (now idle) machine: one shard of each runtime at a time.
        footprint = shard_footprint.measure(
            cluster.model, settings.torch_threads, cluster.work_dir / "footprint"
        )
    remote = [s.round_trip_ms / 1e3 for s in samples]
    in_p50, cl_p50 = percentile_ms(inproc, 50), percentile_ms(remote, 50)
    in_p99, cl_p99 = percentile_ms(inproc, 99), percentile_ms(remote, 99)
    result: dict[str, object] = {
        "stages": cluster.model.n_stages,
        "redis_durability": settings.redis_durability,
        "wait_replicas": settings.wait_replicas,
        "torch_threads_per_shard": settings.torch_threads,
        "steps": settings.steps,
        "inprocess_p50_ms": round(in_p50, 3),
        "inprocess_p99_ms": round(in_p99, 3),
        "cluster_p50_ms": round(cl_p50, 3),
        "cluster_p99_ms": round(cl_p99, 3),
        "overhead_p50_ms": round(cl_p50 - in_p50, 3),
        "overhead_p99_ms": round(cl_p99 - in_p99, 3),
        "overhead_breakdown_ms": overhead.breakdown(samples, inproc_stages, idle_stages),
        "stream_p50_ms": round(percentile_ms(streamed, 50), 3),
        "stream_p99_ms": round(percentile_ms(streamed, 99), 3),
        "ratio_p50": round(cl_p50 / in_p50, 3) if in_p50 else None,
        "steps_per_s": rates,
        "shard_runtime": settings.runtime,
        **footprint,
        **tls,
    }
    return result


def print_table(result: dict[str, object]) -> None:
    print(
        f"stages={result['stages']} torch_threads/shard={result['torch_threads_per_shard']} steps={result['steps']}"
    )
    print(f"{'':<12} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"{'in-process':<12} {result['inprocess_p50_ms']:>9} {result['inprocess_p99_ms']:>9}")
    print(f"{'cluster':<12} {result['cluster_p50_ms']:>9} {result['cluster_p99_ms']:>9}")
    print(f"{'  streamed':<12} {result['stream_p50_ms']:>9} {result['stream_p99_ms']:>9}")
    print(
        f"overhead p50 {result['overhead_p50_ms']} ms, p99 {result['overhead_p99_ms']} ms, "
        f"ratio {result['ratio_p50']}"
    )
    parts = result["overhead_breakdown_ms"]
    assert isinstance(parts, dict)
    print("where the p50 overhead goes (ms):")
    for part, ms in parts.items():
        print(f"  {part:<32} {ms}")
    rates = result["steps_per_s"]
    assert isinstance(rates, dict)
    for sessions, rate in rates.items():
        print(f"{sessions:>3} concurrent sessions: {rate} steps/s")
    shard_footprint.print_table(result)
    if "tls_cluster_p50_ms" in result:
        tls_cost.print_table(result)


def main(settings: BenchSettings) -> int:
    if settings.pinned:
        from service.bench import pipelining

        result = pipelining.run(settings)
        show = pipelining.print_table
    elif settings.failover:
        from service.bench import failover

        result = failover.run(settings)
        show = failover.print_table
    elif settings.scale:
        from service.bench import fleet_cost

        result = fleet_cost.run(settings)
        show = fleet_cost.print_table
    elif settings.floors:
        from service.bench import transport_floors

        result = transport_floors.run(settings)
        show = transport_floors.print_table
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
