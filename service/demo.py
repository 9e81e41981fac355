"""`actionmesh demo`: a local cluster plus a simulated robot stepping it at control rate."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import grpc
import torch

from service import tensor_codec
from service.config import DemoSettings
from service.fleet import grpc_code_name
from service.latency import percentile_ms
from service.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc
from service.robot_sim import SimulatedArm

_HEADER = f"{'seq':>6} {'latency_ms':>10} {'server_ms':>9} {'mode':<10} {'batch':>5}  model"


def _requests(
    outbox: queue.SimpleQueue[session_pb2.StepRequest | None],
) -> Iterator[session_pb2.StepRequest]:
    while (request := outbox.get()) is not None:
        yield request


def drive_robot(address: str, settings: DemoSettings) -> int:
    """Step one simulated arm over a StreamSteps stream; print a live table and a summary.

    Returns the number of failed steps.
    """
    channel = grpc.insecure_channel(address)
    stub = session_pb2_grpc.SessionServiceStub(channel)
    opened = stub.OpenSession(session_pb2.OpenSessionRequest(client_id="demo-robot"), timeout=10)
    spec = opened.action_spec
    arm = SimulatedArm(spec.observation_dim, spec.joints, seed=settings.seed)
    period_s = 1.0 / settings.rate_hz
    total = max(1, round(settings.duration_s * settings.rate_hz))
    print(
        f"session {opened.session_id} model {opened.model_version}: {total} steps at {settings.rate_hz:g} Hz"
    )
    print(_HEADER)
    outbox: queue.SimpleQueue[session_pb2.StepRequest | None] = queue.SimpleQueue()
    replies = stub.StreamSteps(_requests(outbox))
    latencies: list[float] = []
    failures, late = 0, 0
    started = next_tick = time.monotonic()
    try:
        for seq in range(1, total + 1):
            sent = time.monotonic()
            outbox.put(
                session_pb2.StepRequest(
                    session_id=opened.session_id,
                    seq=seq,
                    timestamp_s=time.time(),
                    observation=tensor_codec.encode(arm.observation()),
                    priority=session_pb2.NORMAL,
                )
            )
            item = next(replies)
            latency = time.monotonic() - sent
            if item.HasField("error"):
                failures += 1
                print(
                    f"{seq:>6} {'-':>10} {'-':>9} {grpc_code_name(item.error.code):<10} {item.error.message}"
                )
            else:
                latencies.append(latency)
                late += latency > period_s
                arm.apply(tensor_codec.decode(item.reply.action), period_s)
                if seq % settings.print_every == 0 or seq == 1:
                    r = item.reply
                    mode = session_pb2.ServeMode.Name(r.serve_mode)
                    print(
                        f"{seq:>6} {latency * 1e3:>10.2f} {r.timing.total_ms:>9.2f} {mode:<10} {r.batch_size:>5}  {r.model_version}"
                    )
            next_tick += period_s
            time.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        outbox.put(None)
        replies.cancel()
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=5)
        channel.close()
    elapsed = time.monotonic() - started
    ok = len(latencies)
    print(
        f"\nsummary: {ok} steps ok, {failures} failed, {late} over the {period_s * 1e3:.0f} ms period; "
        f"p50 {percentile_ms(latencies, 50):.2f} ms, p99 {percentile_ms(latencies, 99):.2f} ms, "
        f"{ok / elapsed:.1f} steps/s"
    )
    return failures


def run(settings: DemoSettings) -> int:
    torch.set_num_threads(1)
    with LocalCluster(settings) as cluster:
        print(
            f"cluster up: coordinator {cluster.address}, redis {cluster.redis_url}, logs {cluster.log_dir}"
        )
        failures = drive_robot(cluster.address, settings)
    print("cluster stopped")
    return 1 if failures else 0
