"""The ONNX Runtime of a shard: a stage's exported graph (`actionmesh export --format onnx`),
run without torch. A shard on it needs onnxruntime, numpy and safetensors only, and starts in
a fraction of a torch shard's time and memory.

The graph file sits beside the stage's safetensors file in the same weights directory (or
checkpoint version, whose manifest carries its sha256), and names in its metadata the model
version and stage it was exported from: a graph left over from other weights is refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors import safe_open

from service.model.config import ModelConfig
from service.model.weights_files import (
    META_PART,
    META_VERSION,
    STAGE_INPUTS,
    STAGE_OUTPUTS,
    onnx_stage_file,
    read_info,
    stage_file,
)
from service.shard.stage_runtime import Array, StageOutputs, is_last

log = logging.getLogger(__name__)

_QUOTE = 300  # characters of a loader's message quoted in an error
# A batch is run this many items at a time: ONNX Runtime's arena grows to the largest run's
# activations and keeps them, so this bounds a shard's peak memory. Measured on the default
# model's middle stage, batches of 16 (in one process, 2 shared cores): the arena grew 31 MiB
# with runs of 16 items, 10 MiB with runs of 4 and 6 MiB with runs of 2, and a batch took
# 22.7, 24.4 and 23.9 ms (on a CPU a bigger run is hardly faster per item).
ROWS_PER_RUN = 2


class StageLoadError(ValueError):
    """The stage's graph cannot be served; the text says which file and why, in one line."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def session_options(threads: int) -> ort.SessionOptions:
    """Threads as set (several shards share a node's cores). ONNX Runtime's memory arena
    stays on: without it every run mallocs its activations afresh from whichever gRPC worker
    thread serves the call, and glibc's per-thread heaps kept about 3x the memory (measured
    with 10 threads calling in turn: peak RSS 319 MiB without the arena, 108 MiB with it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: ours say what failed
    return options


class OnnxStage:
    def __init__(self, directory: Path, index: int, *, int8: bool, threads: int) -> None:
        info = read_info(directory)
        self._cfg, self._index, self.version = info.config, index, info.version
        if not 0 <= index < info.config.n_stages:
            raise StageLoadError(
                f"stage {index} out of range: the model has {info.config.n_stages} stages"
            )
        self.path = directory / onnx_stage_file(index, int8=int8)
        if not self.path.is_file():
            raise StageLoadError(
                f"{self.path.name} is missing in {directory}: export it with `actionmesh export "
                f"--format onnx --weights-dir DIR` before `actionmesh ckpt create`"
            )
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own classes (Fail, InvalidGraph, ...)
            raise StageLoadError(
                f"{self.path.name} in {directory} cannot be loaded by ONNX Runtime: {_one_line(exc)}"
            ) from exc
        self._check(directory)
        with safe_open(str(directory / stage_file(index)), framework="numpy") as tensors:
            self._fresh: Array = tensors.get_tensor("initial_memory").astype(np.float32)

    def _check(self, directory: Path) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        exported = (meta.get(META_VERSION), meta.get(META_PART))
        if exported != (self.version, str(self._index)):
            raise StageLoadError(
                f"{self.path.name} in {directory} was exported from version {exported[0]} stage "
                f"{exported[1]}, not version {self.version} stage {self._index}: export it again"
            )
        names = (
            tuple(i.name for i in self.session.get_inputs()),
            tuple(o.name for o in self.session.get_outputs()),
        )
        if names != (STAGE_INPUTS, STAGE_OUTPUTS):
            raise StageLoadError(
                f"{self.path.name} has inputs/outputs {names}, expected {(STAGE_INPUTS, STAGE_OUTPUTS)}"
            )

    @property
    def cfg(self) -> ModelConfig:
        return self._cfg

    @property
    def index(self) -> int:
        return self._index

    def fresh_memory(self) -> Array:
        return self._fresh

    def run(self, inputs: Array, memory: Array, want_action: bool) -> StageOutputs:
        """Shapes and dtypes are the servicer's to check (stage_servicer._decode)."""
        runs = [
            self.session.run(
                list(STAGE_OUTPUTS),
                {"input": inputs[i : i + ROWS_PER_RUN], "memory": memory[i : i + ROWS_PER_RUN]},
            )
            for i in range(0, len(inputs), ROWS_PER_RUN)
        ]
        hidden, new_memory, action = (
            parts[0] if len(parts) == 1 else np.concatenate(parts)
            for parts in zip(*runs, strict=True)
        )
        wanted = want_action or is_last(self._cfg, self._index)
        return StageOutputs(hidden, new_memory, action if wanted else None)
