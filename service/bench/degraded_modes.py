"""`actionmesh bench --degraded`: how good each serve mode is on the reach task, and how fast
it answers through a real cluster.

Error and success come from the offline evaluation of the same weights (service.training:
closed-loop episodes against the analytic expert). Latency is measured through a local
cluster with one replica per stage: FULL with every stage up, then the last stages killed one
by one (EARLY_EXIT from each shallower stage in turn, the policy told to accept any exit), then
stage 0 (FALLBACK, the student in the coordinator). "state_lost" runs the FULL path (its state
is merely fresh), so its latency is FULL's.

"full_int8" is FULL on the stages' int8 ONNX graphs (`shard --runtime onnx-int8`): its error
and success from the same held-out episodes, its latency through a second cluster whose shards
run those graphs; `int8` compares it with the float32 graphs (weights size, in-process latency)
and with FULL's error.
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
import numpy as np
import torch

from chaos.fleet import SteppingRobot
from fallback.quality import ModeQuality
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.export import export
from service.model.weights_files import onnx_stage_file
from service.proto import session_pb2, session_pb2_grpc
from service.runtime.command_settings import BenchSettings, TrainSettings
from service.shard.onnx_stage import OnnxStage
from service.shard.stage_runtime import StageRuntime
from service.training.evaluate import LATENCY_STEPS, evaluate, step_latency_ms
from service.training.task import TaskConfig, make_episodes, observe, rollout

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
    if outcome_mode == session_pb2.SERVE_MODE_EARLY_EXIT:
        return f"early_exit_{exit_stage}"
    return "fallback" if outcome_mode == session_pb2.SERVE_MODE_FALLBACK else "full"


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


INT8_ERROR_TARGET = 1.05  # full_int8's action error at most 5% above FULL's


class StagesPolicy:
    """FULL over shard runtimes in this process: each stage's memory carried step to step."""

    def __init__(self, stages: list[StageRuntime]) -> None:
        self.stages = stages
        self.memories: list[np.ndarray] = []

    def reset(self, batch: int) -> None:
        self.memories = [np.stack([s.fresh_memory()] * batch) for s in self.stages]

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.numpy()
        action = None
        for k, stage in enumerate(self.stages):
            out = stage.run(x, self.memories[k], want_action=False)
            x, self.memories[k], action = out.hidden, out.memory, out.action
        assert action is not None  # the last stage always answers one
        return torch.from_numpy(action)


def onnx_quality(
    weights_dir: Path, task: TaskConfig, episodes: int, seed: int, threads: int
) -> tuple[ModeQuality, float]:
    """full_int8 on the held-out episodes `evaluate` uses (same seed), and the in-process p50
    of FULL on the float32 graphs (the latency int8 must not be worse than)."""
    n = weights.read_info(weights_dir).config.n_stages

    def policy(int8: bool) -> StagesPolicy:
        return StagesPolicy(
            [OnnxStage(weights_dir, k, int8=int8, threads=threads) for k in range(n)]
        )

    held_out = make_episodes(task, episodes, seed)
    one = make_episodes(task, 1, seed)
    latency_obs = torch.cat(
        [observe(task, one, one.start, t) for t in range(min(task.steps, LATENCY_STEPS))]
    )
    int8 = policy(int8=True)
    run = rollout(task, held_out, int8)
    quality = ModeQuality(
        error=run.action_error(),
        success=float(run.success(task).float().mean()),
        p50_ms=step_latency_ms(int8, latency_obs),
    )
    return quality, step_latency_ms(policy(int8=False), latency_obs)


def int8_cluster_p50_ms(settings: BenchSettings, weights_dir: Path) -> float:
    """FULL's p50 through a cluster whose shards run the int8 graphs (every stage up)."""
    cfg = weights.read_info(weights_dir).config
    with tempfile.TemporaryDirectory(prefix="actionmesh-bench-", dir=settings.work_dir) as work:
        shutil.copytree(weights_dir, Path(work) / "weights")
        cluster_settings = settings.model_copy(
            update={"replicas": 1, "work_dir": Path(work), "runtime": "onnx-int8"}
        )
        with (
            LocalCluster(cluster_settings, model=cfg) as cluster,
            grpc.insecure_channel(cluster.address) as channel,
        ):
            stub = session_pb2_grpc.SessionServiceStub(channel)
            gen = torch.Generator().manual_seed(settings.seed)
            obs = [
                torch.randn(cfg.observation_dim, generator=gen)
                for _ in range((settings.steps + SETTLE_STEPS) * 4)
            ]
            robot = SteppingRobot(stub, obs, CONTROL_PERIOD_S, streaming=True)
            robot.start()
            try:
                answers = _measure(robot, settings.steps)
                samples = [latency for mode, latency in answers if mode == "full"]
            finally:
                robot.stop()
                robot.join(timeout=10)
    print("bench --degraded: int8 shards: measured", file=sys.stderr)
    return round(percentile_ms(samples, 50), 2)


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


def _exported(weights_dir: Path, scratch: Path) -> Path:
    """A copy of the weights with their ONNX graphs (float32 and int8) beside them."""
    target = scratch / "exported"
    shutil.copytree(weights_dir, target)
    if not (target / onnx_stage_file(0, int8=True)).is_file():
        export(target, target, "onnx")
    return target


def run(settings: BenchSettings) -> dict[str, Any]:
    torch.set_num_threads(settings.torch_threads)  # in-process figures: as one shard computes
    with tempfile.TemporaryDirectory(prefix="actionmesh-train-") as scratch:
        weights_dir = _trained(settings, Path(scratch))
        model, info = weights.load_model(weights_dir)
        cfg = model.cfg
        task = TaskConfig(
            joints=cfg.joints, horizon=cfg.horizon, observation_dim=cfg.observation_dim
        )
        eval_seed = settings.seed + 1_000_000
        table = evaluate(model, task, settings.degraded_episodes, eval_seed, info.version)
        exported = _exported(weights_dir, Path(scratch))
        int8, onnx_p50_ms = onnx_quality(
            exported, task, settings.degraded_episodes, eval_seed, settings.torch_threads
        )
        baseline = trained_baseline(weights_dir)
        latencies = cluster_latencies(settings, weights_dir)
        latencies["full_int8"] = int8_cluster_p50_ms(settings, exported)
        sizes = [
            sum((exported / onnx_stage_file(k, int8=q)).stat().st_size for k in range(cfg.n_stages))
            for q in (False, True)
        ]
    latencies.setdefault("state_lost", latencies.get("full", 0.0))
    modes = {**table.modes, "full_int8": int8}
    error_ratio = int8.error / max(table.modes["full"].error, 1e-12)
    return {
        "model_version": info.version,
        "episodes": settings.degraded_episodes,
        "modes": {
            name: {"error": q.error, "success": q.success, "p50_ms": latencies.get(name)}
            for name, q in modes.items()
        },
        "in_process_p50_ms": {name: round(q.p50_ms, 3) for name, q in modes.items()},
        "targets": {
            t.name: {"ratio": round(t.ratio, 3), "want": t.want, "met": t.met}
            for t in table.targets()
        },
        "baseline": baseline,
        "int8": {
            "weights_ratio": round(sizes[0] / sizes[1], 2),
            "in_process_p50_ms": {
                "onnx": round(onnx_p50_ms, 3),
                "onnx_int8": round(int8.p50_ms, 3),
            },
            "error_ratio": round(error_ratio, 4),
            "error_met": error_ratio <= INT8_ERROR_TARGET,
        },
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
    int8 = result["int8"]
    p50 = int8["in_process_p50_ms"]
    print(
        f"int8 graphs: weights {int8['weights_ratio']}x smaller; in-process p50 "
        f"{p50['onnx_int8']} ms against {p50['onnx']} ms float32 (ONNX); error "
        f"{int8['error_ratio']}x full, want <= {INT8_ERROR_TARGET}: "
        f"{'met' if int8['error_met'] else 'MISSED'}"
    )
