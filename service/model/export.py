"""`actionmesh export`: the stages and the student of a weights directory as ONNX graphs (and
int8-quantized copies of the stages) or TorchScript modules, written beside the safetensors
files, so that `actionmesh ckpt create` snapshots them with their sha256 like every other file.

Every graph returns what a shard's Forward does: a stage maps (input, memory) to (hidden,
new_memory, action), its exit (or final) action; the student maps (observation, state) to
(action, new_state). The batch dimension is dynamic. Each file records the model version and
part it came from (ONNX metadata, a TorchScript extra file), and a loader refuses a file that
names other weights (service/shard/onnx_stage.py).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from tqdm import tqdm

from service.model import weights
from service.model.action_model import ActionModel
from service.model.stage import Stage
from service.model.student import Student
from service.model.weights_files import (
    META_PART,
    META_VERSION,
    STAGE_INPUTS,
    STAGE_OUTPUTS,
    STUDENT_ONNX_FILE,
    STUDENT_TORCHSCRIPT_FILE,
    onnx_stage_file,
    torchscript_stage_file,
)

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript"]
OPSET = 17  # LayerNormalization is one op from 17 on
STUDENT_PART = "student"
STUDENT_INPUTS, STUDENT_OUTPUTS = ("observation", "state"), ("action", "new_state")
EXAMPLE_BATCH = 2  # traced at 2, dynamic in the graph


class StageGraph(nn.Module):
    """A stage and its action head in one graph: what a shard's Forward answers."""

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.stage = stage

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden, new_memory = self.stage(x, memory)
        return hidden, new_memory, self.stage.action(hidden)


def example_inputs(stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = stage.cfg
    shape = (cfg.observation_dim,) if stage.index == 0 else (cfg.tokens, cfg.d_model)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(EXAMPLE_BATCH, *shape, generator=gen), stage.fresh_memory(EXAMPLE_BATCH)


def _student_inputs(student: Student, observation_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(EXAMPLE_BATCH, observation_dim), student.fresh_state(EXAMPLE_BATCH)


def _onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names: tuple[tuple[str, ...], tuple[str, ...]],
    path: Path,
    metadata: dict[str, str],
) -> None:
    inputs, outputs = names
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
            opset_version=OPSET,
            dynamo=False,
        )
    _stamp(path, metadata)


def _stamp(path: Path, metadata: dict[str, str]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_int8(source: Path, target: Path, metadata: dict[str, str]) -> None:
    """Dynamic int8 quantization of the linear layers (MatMul/Gemm with a weight initializer;
    attention's activation products stay float32): weights int8 per tensor, activations
    quantized per batch at run time. Per output channel was tried: on the trained reach task
    its action error was 1.050x float32's against 1.009x per tensor."""
    with (
        tempfile.TemporaryDirectory(prefix="actionmesh-quantize-") as scratch,
        _quiet_root_logger(),
    ):
        staged = Path(scratch) / target.name
        quantize_dynamic(
            str(source),
            str(staged),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=False,
        )
        _stamp(staged, metadata)
        staged.replace(target)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs an advice to pre-process the graph on the root logger at WARNING;
    for these graphs (no shape inference needed for MatMul/Gemm weights) it does not apply."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _meta(version: str, part: str) -> dict[str, str]:
    return {META_VERSION: version, META_PART: part}


def _export_onnx(model: ActionModel, version: str, out: Path, int8: bool) -> list[Path]:
    written: list[Path] = []
    jobs: list[tuple[str, Callable[[], list[Path]]]] = []
    for k in range(model.cfg.n_stages):

        def stage_job(k: int = k) -> list[Path]:
            stage = model.stage(k)
            path = out / onnx_stage_file(k)
            meta = _meta(version, str(k))
            _onnx(
                StageGraph(stage), example_inputs(stage), (STAGE_INPUTS, STAGE_OUTPUTS), path, meta
            )
            if not int8:
                return [path]
            quantized = out / onnx_stage_file(k, int8=True)
            quantize_int8(path, quantized, meta)
            return [path, quantized]

        jobs.append((f"stage {k}", stage_job))

    def student_job() -> list[Path]:
        path = out / STUDENT_ONNX_FILE
        args = _student_inputs(model.student, model.cfg.observation_dim)
        names = (STUDENT_INPUTS, STUDENT_OUTPUTS)
        _onnx(model.student, args, names, path, _meta(version, STUDENT_PART))
        return [path]

    jobs.append((STUDENT_PART, student_job))
    for _, job in tqdm(jobs, desc="export onnx", unit="part", leave=False):
        written += job()
    return written


def _export_torchscript(model: ActionModel, version: str, out: Path) -> list[Path]:
    written: list[Path] = []
    parts: list[tuple[str, nn.Module, tuple[torch.Tensor, ...], Path]] = [
        (
            str(k),
            StageGraph(model.stage(k)),
            example_inputs(model.stage(k)),
            out / torchscript_stage_file(k),
        )
        for k in range(model.cfg.n_stages)
    ]
    student_args = _student_inputs(model.student, model.cfg.observation_dim)
    parts.append((STUDENT_PART, model.student, student_args, out / STUDENT_TORCHSCRIPT_FILE))
    for part, module, args, path in tqdm(
        parts, desc="export torchscript", unit="part", leave=False
    ):
        extra = {"actionmesh.json": json.dumps(_meta(version, part), sort_keys=True)}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            traced = torch.jit.trace(module, args)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(path), _extra_files=extra)
        written.append(path)
    return written


def export(weights_dir: Path, output_dir: Path, fmt: Format, *, int8: bool = True) -> list[Path]:
    """Export every stage and the student of `weights_dir` into `output_dir`; the paths
    written. `int8` (ONNX only) adds stage-K.int8.onnx beside each stage-K.onnx."""
    model, info = weights.load_model(weights_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        written = _export_onnx(model, info.version, output_dir, int8)
    else:
        written = _export_torchscript(model, info.version, output_dir)
    log.info("version=%s exported as %s: %s", info.version, fmt, [p.name for p in written])
    return written
