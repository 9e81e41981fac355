"""`actionmesh bench --degraded`: how good each serve mode is on the reach task, and how fast
it answers through a real cluster.

Error and success come from the offline evaluation of the same weights (service.training:
closed-loop episodes against the analytic expert). Latency is measured through a local
cluster with one replica per stage: FULL with every stage up, then the last stages killed one
by one (EARLY_EXIT from each shallower stage in turn, the policy told to accept any exit), then
stage 0 (FALLBACK, the student in the coordinator). "state_lost" runs the FULL path (its state
is merely fresh), so its latency is FULL's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import torch

from chaos.fleet import SteppingRobot
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.proto import session_pb2, session_pb2_grpc
from service.runtime.settings import BenchSettings, TrainSettings
from service.training.evaluate import evaluate
from service.training.task import TaskConfig

CONTROL_PERIOD_S = 0.02
SETTLE_STEPS = 10  # answers after a kill not counted: the failing FULL attempt, catch-up
# Every exit head and the student allowed, so that each mode's latency can be measured.
ANY_QUALITY = {
    "ACTIONMESH_EARLY_EXIT_MAX_ERROR_RATIO": "1e9",
    "ACTIONMESH_FALLBACK_MAX_ERROR_RATIO": "1e9",
}


def _trained(settings: BenchSettings, scratch: Path) -> Path:
    """The weights to bench: --weights-dir, else a model trained now with the defaults."""
    if settings.weights_dir is not None:
        return settings.weights_dir
    from service.cli import train as training_cli

    out = scratch / "trained"
    print("bench --degraded: no --weights-dir; training the default model first", file=sys.stderr)
    training_cli.main(TrainSettings(output_dir=out, stages=settings.stages, seed=settings.seed))
    return out


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The cluster's processes inherit these settings (ACTIONMESH_<SETTING> variables)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mode_name(outcome_mode: int, exit_stage: int) -> str:
    if outcome_mode == session_pb2.EARLY_EXIT:
        return f"early_exit_{exit_stage}"
    return "fallback" if outcome_mode == session_pb2.FALLBACK else "full"


def _measure(robot: SteppingRobot, steps: int) -> list[tuple[str, float]]:
    """(mode, latency) of the next `steps` answers after SETTLE_STEPS more."""
    start = len(robot.outcomes) + SETTLE_STEPS
    deadline = time.monotonic() + 60 + steps * CONTROL_PERIOD_S * 3
    while len(robot.outcomes) < start + steps:
        if robot.error is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bench --degraded: the robot stopped: {robot.error}")
        time.sleep(0.05)
    return [
        (_mode_name(o.serve_mode, o.exit_stage), o.latency_s)
        for o in robot.outcomes[start : start + steps]
        if o.code == "OK"
    ]


def cluster_latencies(settings: BenchSettings, weights_dir: Path) -> dict[str, float]:
    """p50 ms per serve mode through a real cluster, stages killed from the last one down."""
    model, _ = weights.load_model(weights_dir)
    n = model.cfg.n_stages
    samples: dict[str, list[float]] = {}
    if settings.work_dir is not None:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="actionmesh-bench-", dir=settings.work_dir) as work:
        shutil.copytree(weights_dir, Path(work) / "weights")
        cluster_settings = settings.model_copy(update={"replicas": 1, "work_dir": Path(work)})
        with (
            _environment(ANY_QUALITY),
            LocalCluster(cluster_settings, model=model.cfg) as cluster,
            grpc.insecure_channel(cluster.address) as channel,
        ):
            stub = session_pb2_grpc.SessionServiceStub(channel)
            gen = torch.Generator().manual_seed(settings.seed)
            steps_total = (n + 1) * (settings.steps + SETTLE_STEPS) * 4
            obs = [
                torch.randn(model.cfg.observation_dim, generator=gen) for _ in range(steps_total)
            ]
            robot = SteppingRobot(stub, obs, CONTROL_PERIOD_S, streaming=True)
            robot.start()
            try:
                for killed in [None, *range(n - 1, -1, -1)]:
                    if killed is not None:
                        cluster.replica_process(f"stage-{killed}-r0").kill()
                    for mode, latency in _measure(robot, settings.steps):
                        samples.setdefault(mode, []).append(latency)
                    what = "every stage up" if killed is None else f"stages {killed}.. down"
                    print(f"bench --degraded: {what}: measured", file=sys.stderr)
            finally:
                robot.stop()
                robot.join(timeout=10)
    return {mode: round(percentile_ms(s, 50), 2) for mode, s in samples.items()}


def trained_baseline(weights_dir: Path) -> dict[str, Any] | None:
    """The GRU baseline's figures from the weights' quality.json (training measured it; its
    weights are not kept), with the episodes they were measured on; None without one."""
    quality = weights_dir / weights.QUALITY_FILE
    if not quality.is_file():
        return None
    table = json.loads(quality.read_text())
    if "baseline" not in table:
        return None
    return {**table["baseline"], "episodes": table["episodes"], "seed": table["seed"]}


def run(settings: BenchSettings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="actionmesh-train-") as scratch:
        weights_dir = _trained(settings, Path(scratch))
        model, info = weights.load_model(weights_dir)
        cfg = model.cfg
        task = TaskConfig(
            joints=cfg.joints, horizon=cfg.horizon, observation_dim=cfg.observation_dim
        )
        table = evaluate(
            model, task, settings.degraded_episodes, settings.seed + 1_000_000, info.version
        )
        baseline = trained_baseline(weights_dir)
        latencies = cluster_latencies(settings, weights_dir)
    latencies.setdefault("state_lost", latencies.get("full", 0.0))
    return {
        "model_version": info.version,
        "episodes": settings.degraded_episodes,
        "modes": {
            name: {"error": q.error, "success": q.success, "p50_ms": latencies.get(name)}
            for name, q in table.modes.items()
        },
        "in_process_p50_ms": {name: round(q.p50_ms, 3) for name, q in table.modes.items()},
        "targets": {
            t.name: {"ratio": round(t.ratio, 3), "want": t.want, "met": t.met}
            for t in table.targets()
        },
        "baseline": baseline,
    }


def print_table(result: dict[str, Any]) -> None:
    modes = result["modes"]
    full = max(modes["full"]["error"], 1e-12)
    print(f"serve modes of {result['model_version']} on {result['episodes']} held-out episodes")
    print(
        f"{'mode':<14}{'error':>10}{'x full':>8}{'success':>9}{'cluster p50':>13}{'in-process':>12}"
    )
    for name, m in modes.items():
        p50 = "-" if m["p50_ms"] is None else f"{m['p50_ms']:.2f} ms"
        print(
            f"{name:<14}{m['error']:10.5f}{m['error'] / full:8.2f}{m['success']:9.1%}"
            f"{p50:>13}{result['in_process_p50_ms'][name]:>9.2f} ms"
        )
    baseline = result.get("baseline")
    if baseline is not None:
        print(
            f"{'GRU baseline':<14}{baseline['error']:10.5f}{baseline['error'] / full:8.2f}"
            f"{baseline['success']:9.1%}  (GRU {baseline['hidden']}, trained directly on the "
            f"expert; {baseline['episodes']} episodes of seed {baseline['seed']})"
        )
    for name, t in result["targets"].items():
        print(f"target {name}: {t['want']}: {t['ratio']} {'met' if t['met'] else 'MISSED'}")
