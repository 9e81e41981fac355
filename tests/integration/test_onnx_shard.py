"""A shard on `--runtime onnx` is a real process that serves a verified checkpoint version
(pulled from a remote, checksums and signature checked) without ever loading torch, and
answers Forward as the torch stage does; a quantized graph that cannot be loaded ends the
shard with one line and exit status 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from service.local.child_process import ChildProcess
from service.local.local_checkpoints import LocalCheckpoints
from service.model import weights
from service.model.action_model import ActionModel
from service.model.export import export
from service.model.weights_files import onnx_stage_file
from service.proto import stage_pb2, stage_pb2_grpc, tensor_codec
from tests.conftest import SMALL_MODEL
from tests.support.process_maps import loads_onnxruntime, loads_torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActionModel, Path]:
    directory = tmp_path_factory.mktemp("weights")
    model = ActionModel(SMALL_MODEL)
    weights.save(model, directory)
    export(directory, directory, "onnx")
    return model.eval(), directory


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_an_onnx_shard_serves_a_verified_version_without_torch(
    exported: tuple[ActionModel, Path], tmp_path: Path, runtime: str
) -> None:
    model, directory = exported
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")
    version = checkpoints.publish(directory, promote=True)
    args = ChildProcess.actionmesh(
        "shard",
        "--stage",
        "1",
        "--runtime",
        runtime,
        "--flash-dir",
        str(tmp_path / "flash"),
        "--remote",
        checkpoints.remote_url,
        "--trusted-keys",
        str(checkpoints.public_key),
        "--port",
        "0",
    )
    shard = ChildProcess(f"shard-{runtime}", args, tmp_path / "logs").start()
    try:
        ports = shard.wait_ready(60)
        x = torch.randn(3, SMALL_MODEL.tokens, SMALL_MODEL.d_model)
        items = [
            stage_pb2.StageItem(session_id=f"s{i}", seq=1, input=tensor_codec.encode(x[i]))
            for i in range(3)
        ]
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc_port']}") as channel:
            stub = stage_pb2_grpc.StageServiceStub(channel)
            info = stub.Info(stage_pb2.InfoRequest(), timeout=5)
            reply = stub.Forward(
                stage_pb2.ForwardRequest(items=items, model_version=version, emit_action=True),
                timeout=10,
            )
        assert (info.model_version, info.stage) == (version, 1)
        assert loads_onnxruntime(shard.pid), "the ONNX Runtime library is not mapped"
        assert not loads_torch(shard.pid), "the ONNX shard loaded torch"
    finally:
        shard.stop()
    stage = model.stage(1)
    with torch.no_grad():
        hidden, memory = stage(x, stage.fresh_memory(3))
        action = stage.action(hidden)
    atol = 1e-5 if runtime == "onnx" else 0.1  # int8: close, its task error is benched
    for i, result in enumerate(reply.results):
        for got, want in ((result.output, hidden), (result.state, memory), (result.action, action)):
            assert torch.allclose(tensor_codec.decode(got), want[i], atol=atol)


def test_a_broken_int8_graph_ends_the_shard_with_one_line(
    exported: tuple[ActionModel, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "weights"
    directory.mkdir()
    for path in exported[1].iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    broken = directory / onnx_stage_file(1, int8=True)
    broken.write_bytes(b"not a graph")
    shard = ["shard", "--stage", "1", "--runtime", "onnx-int8", "--weights-dir", str(directory)]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *shard, "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shard: stage 1: stage-1.int8.onnx in ")
    assert "cannot be loaded by ONNX Runtime" in lines[0]
