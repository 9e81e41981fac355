"""What one shard costs a small device, per runtime (torch, onnx, onnx-int8): its start time
(process start to ready, its signed checkpoint version verified on flash) and its peak RSS
beyond the parameter bytes it serves (after batches of Forward calls).

Each shard is a real `actionmesh shard` process on a flash that already holds the version (a
restart, the case that matters after a crash), started one at a time so that none competes
with another for the cores while it starts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from service.local.child_process import ChildProcess
from service.local.local_checkpoints import LocalCheckpoints
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.export import export
from service.model.weights_files import onnx_stage_file, stage_file
from service.proto import array_codec, stage_pb2, stage_pb2_grpc
from service.shard.stage_runtime import RuntimeName, input_shape

RUNTIMES: tuple[RuntimeName, ...] = ("torch", "onnx", "onnx-int8")
BATCH, CALLS = 16, 20  # Forward calls of BATCH items before the peak RSS is read
MIB = 1 << 20
UNTIE_NOISE = 1e-3


def _weights_file(runtime: RuntimeName, stage: int) -> str:
    """The file whose bytes are the stage's parameters on that runtime."""
    if runtime == "torch":
        return stage_file(stage)
    return onnx_stage_file(stage, int8=runtime == "onnx-int8")


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _forward_batches(port: int, cfg: ModelConfig, stage: int, version: str) -> None:
    rng = np.random.default_rng(0)
    shape = input_shape(cfg, stage)
    items = [
        stage_pb2.StageItem(
            session_id=f"bench-{i}",
            seq=1,
            input=array_codec.encode(rng.standard_normal(shape).astype(np.float32)),
        )
        for i in range(BATCH)
    ]
    request = stage_pb2.ForwardRequest(items=items, model_version=version, emit_action=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stage_pb2_grpc.StageServiceStub(channel)
        for _ in range(CALLS):
            stub.Forward(request, timeout=30)


def _measure(
    runtime: RuntimeName,
    stage: int,
    checkpoints: LocalCheckpoints,
    version: str,
    cfg: ModelConfig,
    threads: int,
    log_dir: Path,
) -> dict[str, float]:
    args = ChildProcess.actionmesh(
        "shard",
        "--stage",
        str(stage),
        "--runtime",
        runtime,
        "--flash-dir",
        str(checkpoints.flash.root),
        "--trusted-keys",
        str(checkpoints.public_key),
        "--torch-threads",
        str(threads),
        "--port",
        "0",
    )
    started = time.monotonic()
    shard = ChildProcess(f"footprint-{runtime}", args, log_dir).start()
    try:
        ports = shard.wait_ready(120)
        start_s = time.monotonic() - started
        _forward_batches(ports["grpc_port"], cfg, stage, version)
        peak = _peak_rss_bytes(shard.pid)
    finally:
        shard.stop()
    params = (checkpoints.flash.path(version) / _weights_file(runtime, stage)).stat().st_size
    return {
        "start_s": round(start_s, 3),
        "peak_rss_mib": round(peak / MIB, 1),
        "params_mib": round(params / MIB, 2),
        "rss_over_params_mib": round((peak - params) / MIB, 1),
    }


def _untied(model: ActionModel) -> ActionModel:
    """Add a little noise to every parameter. A fresh model's residual output layers start at
    zero, all alike; the ONNX export stores equal tensors once (one Identity of the other) and
    int8 quantization then keeps a float copy of each beside its int8 one, so the int8 file of
    a fresh model is 2.4x smaller than float32 where a trained model's is 3.9x."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * UNTIE_NOISE)
    return model


def measure(cfg: ModelConfig, threads: int, work_dir: Path) -> dict[str, Any]:
    """Every runtime's figures for the middle stage of a model of `cfg`, and the ONNX ones as
    the headline keys. The weights are fresh, made unlike each other as trained ones are."""
    weights_dir = work_dir / "weights"
    weights.save(_untied(ActionModel(cfg)), weights_dir)
    print("bench: exporting the ONNX graphs for the shard footprint", file=sys.stderr)
    export(weights_dir, weights_dir, "onnx")
    checkpoints = LocalCheckpoints(work_dir / "checkpoints")
    version = checkpoints.publish(weights_dir, promote=False)  # signed, on the operator flash
    checkpoints.flash.set_current(version)
    stage = cfg.n_stages // 2
    figures = {
        runtime: _measure(runtime, stage, checkpoints, version, cfg, threads, work_dir / "logs")
        for runtime in RUNTIMES
    }
    onnx = figures["onnx"]
    return {
        "shard_rss_over_params_mib": onnx["rss_over_params_mib"],
        "shard_start_s": onnx["start_s"],
        "shard_footprint": {"stage": stage, "batch": BATCH, **figures},
        "int8_weights_ratio": round(
            figures["onnx"]["params_mib"] / figures["onnx-int8"]["params_mib"], 2
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    footprint = result["shard_footprint"]
    print(f"one shard (stage {footprint['stage']}, batches of {footprint['batch']}):")
    print(
        f"{'runtime':<10} {'start s':>8} {'peak RSS MiB':>13} {'params MiB':>11} {'RSS-params':>11}"
    )
    for runtime in RUNTIMES:
        f = footprint[runtime]
        print(
            f"{runtime:<10} {f['start_s']:>8} {f['peak_rss_mib']:>13} {f['params_mib']:>11} "
            f"{f['rss_over_params_mib']:>11}"
        )
    print(f"int8 weights {result['int8_weights_ratio']}x smaller than float32")
