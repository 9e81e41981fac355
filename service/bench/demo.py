"""`actionmesh demo`: a local cluster plus a simulated robot stepping it at control rate."""

from __future__ import annotations

import time

import torch

from chaos.robot_sim import SimulatedArm
from service.bench.latency import percentile_ms
from service.client import ActionMeshClient, ActionMeshClientError, Session
from service.local.local_cluster import LocalCluster
from service.runtime.settings import DemoSettings

_HEADER = f"{'seq':>6} {'latency_ms':>10} {'server_ms':>9} {'mode':<10} {'batch':>5}  model"


def drive_robot(address: str, settings: DemoSettings) -> int:
    """Step one simulated arm over a StreamSteps stream; print a live table and a summary.

    Returns the number of failed steps (failed after the client's own retries).
    """
    with ActionMeshClient([address], client_id="demo-robot") as client:
        session = client.open_session()
        try:
            return _drive(session, settings)
        finally:
            session.close()


def _drive(session: Session, settings: DemoSettings) -> int:
    arm = SimulatedArm(
        session.action_spec.observation_dim, session.action_spec.joints, settings.seed
    )
    period_s = 1.0 / settings.rate_hz
    total = max(1, round(settings.duration_s * settings.rate_hz))
    print(
        f"session {session.session_id} model {session.model_version}: {total} steps at {settings.rate_hz:g} Hz"
    )
    print(_HEADER)
    latencies: list[float] = []
    failures, late = 0, 0
    started = next_tick = time.monotonic()
    with session.stream() as stream:
        for _ in range(total):
            seq, sent = session.seq + 1, time.monotonic()
            try:
                result = stream.step(arm.observation(), priority="NORMAL")
            except ActionMeshClientError as exc:
                failures += 1
                print(f"{seq:>6} {'-':>10} {'-':>9} {exc.code:<10} {exc}")
            else:
                latency = time.monotonic() - sent
                latencies.append(latency)
                late += latency > period_s
                arm.apply(result.action, period_s)
                if seq % settings.print_every == 0 or seq == 1:
                    print(
                        f"{seq:>6} {latency * 1e3:>10.2f} {result.total_ms:>9.2f} {result.serve_mode:<10} {result.batch_size:>5}  {result.model_version}"
                    )
            next_tick += period_s
            time.sleep(max(0.0, next_tick - time.monotonic()))
    elapsed = time.monotonic() - started
    ok = len(latencies)
    p99 = percentile_ms(latencies, 99)
    print(
        f"\nsummary: {ok} steps ok, {failures} failed, {late} over the {period_s * 1e3:.0f} ms period; "
        f"p50 {percentile_ms(latencies, 50):.2f} ms, p99 {p99:.2f} ms, "
        f"{ok / elapsed:.1f} steps/s"
    )
    within = "within" if p99 <= period_s * 1e3 else "OVER"
    print(
        f"control loop: {late} of {total} ticks late (answered after the {period_s * 1e3:.0f} ms "
        f"period), p99 {within} the period"
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
