"""`actionmesh bench --pinned`: does splitting the model across cores pay? Two stages, each
shard pinned to a core of its own, 16 robots stepping back to back, against the whole model
in this process pinned to one core, batching the same 16 sessions (the best one core can do).

With two batches in flight, stage 0 works on one while stage 1 works on the other; 2.0 is the
limit. The coordinator, Redis and the robots are not pinned: on a 2-core machine they take
their CPU from the same two cores, which is what the speedup pays for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import torch

from service.bench.step_latency import throughput
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2_grpc
from service.runtime.command_settings import BenchSettings

STAGES, SESSIONS = 2, 16
INFLIGHT = STAGES + 1  # the coordinator's max_inflight_batches for this run


@contextmanager
def pinned_to(core: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@torch.no_grad()
def inprocess_steps_per_s(settings: BenchSettings, cluster: LocalCluster) -> float:
    """SESSIONS sessions batched through the whole model, back to back, on one core."""
    torch.set_num_threads(settings.torch_threads)
    model, _ = weights.load_model(cluster.weights_dir)
    states = model.fresh_states(SESSIONS)
    obs = torch.randn(
        SESSIONS, model.cfg.observation_dim, generator=torch.Generator().manual_seed(0)
    )
    with pinned_to(sorted(os.sched_getaffinity(0))[0]):
        for _ in range(3):  # warm-up
            model.step(obs, states)
        batches, started = 0, time.perf_counter()
        while time.perf_counter() - started < settings.throughput_s:
            _, states = model.step(obs, states)
            batches += 1
        elapsed = time.perf_counter() - started
    return batches * SESSIONS / elapsed


def run(settings: BenchSettings) -> dict[str, object]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < STAGES:
        raise SystemExit(f"bench --pinned needs {STAGES} cores; this process may use {cores}")
    two_stages = settings.model_copy(update={"stages": STAGES, "stage_boundaries": []})
    with LocalCluster(
        two_stages, pin_shards=True, coordinator_overrides={"max_inflight_batches": INFLIGHT}
    ) as cluster:
        alone = inprocess_steps_per_s(settings, cluster)
        with grpc.insecure_channel(cluster.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            split = throughput(stub, SESSIONS, settings.throughput_s, settings.wait_replicas)
    return {
        "stages": STAGES,
        "sessions": SESSIONS,
        "shard_cores": cores[:STAGES],
        "torch_threads_per_shard": settings.torch_threads,
        "max_inflight_batches": INFLIGHT,
        "inprocess_one_core_steps_per_s": round(alone, 1),
        "cluster_pinned_steps_per_s": round(split, 1),
        "pipeline_speedup": round(split / alone, 3),
    }


def print_table(result: dict[str, object]) -> None:
    print(
        f"{result['sessions']} sessions, {result['stages']} stages, shards pinned to cores "
        f"{result['shard_cores']}, {result['max_inflight_batches']} batches in flight at most"
    )
    print(f"whole model, one core:   {result['inprocess_one_core_steps_per_s']} steps/s")
    print(f"pipeline, a core a stage: {result['cluster_pinned_steps_per_s']} steps/s")
    print(f"pipeline_speedup {result['pipeline_speedup']} (limit 2.0)")
