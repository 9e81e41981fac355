"""The ONNX runtime of a stage computes what the torch `Stage` computes (hidden, recurrent
memory carried across steps, the exit action), at any batch size (one run or several); its
int8 copy stays close; a graph that is missing, broken or exported from other weights is
refused in one line.

ONNX Runtime sessions run in this process (no process, no socket); exporting a small model
takes about a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.export import export
from service.model.weights_files import (
    META_VERSION,
    STUDENT_ONNX_FILE,
    onnx_stage_file,
    torchscript_stage_file,
)
from service.shard.onnx_stage import ROWS_PER_RUN, OnnxStage, StageLoadError
from service.shard.torch_stage import TorchStage

CFG = ModelConfig(d_model=32, n_heads=4, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
ATOL = 1e-5
STEPS = 5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActionModel, Path]:
    directory = tmp_path_factory.mktemp("weights")
    model = ActionModel(CFG)
    weights.save(model, directory)
    export(directory, directory, "onnx")
    return model.eval(), directory


# The largest batch is run in several pieces (ROWS_PER_RUN items each), the last one partial.
@pytest.mark.parametrize("batch", [1, 3, 2 * ROWS_PER_RUN + 1])
def test_onnx_stages_equal_torch_stages_step_after_step(
    exported: tuple[ActionModel, Path], batch: int
) -> None:
    model, directory = exported
    onnx_stages = [OnnxStage(directory, k, int8=False, threads=1) for k in range(CFG.n_stages)]
    torch_stages = [TorchStage(model.stage(k)) for k in range(CFG.n_stages)]
    gen = torch.Generator().manual_seed(batch)
    memories = {
        name: [np.stack([s.fresh_memory()] * batch) for s in stages]
        for name, stages in (("onnx", onnx_stages), ("torch", torch_stages))
    }
    for t in range(STEPS):  # memory carried from step to step, as the coordinator does
        obs = torch.randn(batch, CFG.observation_dim, generator=gen).numpy()
        x = {"onnx": obs, "torch": obs}
        for k in range(CFG.n_stages):
            got = onnx_stages[k].run(x["onnx"], memories["onnx"][k], want_action=True)
            want = torch_stages[k].run(x["torch"], memories["torch"][k], want_action=True)
            assert got.action is not None and want.action is not None
            for what in ("hidden", "memory", "action"):
                a, b = getattr(got, what), getattr(want, what)
                assert np.allclose(a, b, atol=ATOL), f"step {t} stage {k} {what}"
            memories["onnx"][k], memories["torch"][k] = got.memory, want.memory
            x = {"onnx": got.hidden, "torch": want.hidden}


def test_the_exit_action_only_when_asked_or_at_the_last_stage(
    exported: tuple[ActionModel, Path],
) -> None:
    _, directory = exported
    for k in range(CFG.n_stages):
        stage = OnnxStage(directory, k, int8=False, threads=1)
        shape = [2, CFG.observation_dim] if k == 0 else [2, CFG.tokens, CFG.d_model]
        out = stage.run(
            np.zeros(shape, np.float32), np.stack([stage.fresh_memory()] * 2), want_action=False
        )
        assert (out.action is not None) == (k == CFG.n_stages - 1)


def test_fresh_memory_is_the_stage_initial_memory(exported: tuple[ActionModel, Path]) -> None:
    model, directory = exported
    for k in range(CFG.n_stages):
        got = OnnxStage(directory, k, int8=False, threads=1).fresh_memory()
        assert np.array_equal(got, model.stage(k).fresh_memory(1)[0].numpy())


def test_int8_stages_stay_close_to_float32(exported: tuple[ActionModel, Path]) -> None:
    """Quantization error, bounded loosely here; its effect on the task is in bench --degraded."""
    _, directory = exported
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, CFG.observation_dim, generator=gen).numpy()
    for k in range(CFG.n_stages):
        fp32 = OnnxStage(directory, k, int8=False, threads=1)
        int8 = OnnxStage(directory, k, int8=True, threads=1)
        memory = np.stack([fp32.fresh_memory()] * 4)
        a, b = fp32.run(x, memory, True), int8.run(x, memory, True)
        assert a.action is not None and b.action is not None
        assert np.abs(a.action - b.action).max() < 0.1, f"stage {k}"
        assert not np.array_equal(a.action, b.action), "the int8 graph is not quantized"
        x = a.hidden


def test_the_student_is_exported_too(exported: tuple[ActionModel, Path]) -> None:
    import onnxruntime as ort

    model, directory = exported
    session = ort.InferenceSession(str(directory / STUDENT_ONNX_FILE))
    obs = torch.randn(3, CFG.observation_dim)
    state = model.student.fresh_state(3)
    action, new_state = session.run(None, {"observation": obs.numpy(), "state": state.numpy()})
    with torch.no_grad():
        want_action, want_state = model.student(obs, state)
    assert np.allclose(action, want_action.numpy(), atol=ATOL)
    assert np.allclose(new_state, want_state.numpy(), atol=ATOL)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_equals_torch(
    exported: tuple[ActionModel, Path], tmp_path: Path
) -> None:
    model, directory = exported
    export(directory, tmp_path, "torchscript")
    stage = model.stage(1)
    x = torch.randn(3, CFG.tokens, CFG.d_model)
    memory = stage.fresh_memory(3)
    loaded = torch.jit.load(str(tmp_path / torchscript_stage_file(1)))
    with torch.no_grad():
        hidden, new_memory, action = loaded(x, memory)
        want_hidden, want_memory = stage(x, memory)
        want_action = stage.action(want_hidden)
    for got, want in ((hidden, want_hidden), (new_memory, want_memory), (action, want_action)):
        assert torch.allclose(got, want, atol=ATOL)


def _copy(directory: Path, target: Path) -> Path:
    target.mkdir()
    for path in directory.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_missing_graph_says_how_to_export_it(
    exported: tuple[ActionModel, Path], tmp_path: Path
) -> None:
    directory = _copy(exported[1], tmp_path / "w")
    (directory / onnx_stage_file(2, int8=True)).unlink()
    with pytest.raises(
        StageLoadError, match=r"stage-2\.int8\.onnx is missing .*`actionmesh export"
    ):
        OnnxStage(directory, 2, int8=True, threads=1)


def test_a_broken_quantized_graph_is_refused_in_one_line(
    exported: tuple[ActionModel, Path], tmp_path: Path
) -> None:
    directory = _copy(exported[1], tmp_path / "w")
    path = directory / onnx_stage_file(1, int8=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn copy
    with pytest.raises(StageLoadError) as refused:
        OnnxStage(directory, 1, int8=True, threads=1)
    message = str(refused.value)
    assert "stage-1.int8.onnx" in message and "cannot be loaded by ONNX Runtime" in message
    assert "\n" not in message


def test_a_graph_exported_from_other_weights_is_refused(
    exported: tuple[ActionModel, Path], tmp_path: Path
) -> None:
    directory = _copy(exported[1], tmp_path / "w")
    path = directory / onnx_stage_file(0)
    graph = onnx.load(str(path))
    for prop in graph.metadata_props:
        if prop.key == META_VERSION:
            prop.value = "m-000000000000"
    onnx.save(graph, str(path))
    with pytest.raises(StageLoadError, match="exported from version m-000000000000"):
        OnnxStage(directory, 0, int8=False, threads=1)
