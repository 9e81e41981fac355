"""A malformed Forward is INVALID_ARGUMENT with the same message whichever runtime serves the
stage (torch, ONNX float32, ONNX int8), and a good one gets the same answer from each."""

from __future__ import annotations

from typing import NoReturn, cast

import grpc
import pytest
import torch

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.export import export
from service.proto import stage_pb2, tensor_codec
from service.shard.onnx_stage import OnnxStage
from service.shard.stage_runtime import StageRuntime
from service.shard.stage_servicer import StageServicer
from service.shard.torch_stage import TorchStage

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=2, tokens=4, memory_tokens=1, n_stages=2)
RUNTIMES = ("torch", "onnx", "onnx-int8")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


CONTEXT = cast(grpc.ServicerContext, Context())


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[StageRuntime]]:
    directory = tmp_path_factory.mktemp("weights")
    model = ActionModel(CFG)
    weights.save(model, directory)
    export(directory, directory, "onnx")
    ks = range(CFG.n_stages)
    return {
        "torch": [TorchStage(model.stage(k)) for k in ks],
        "onnx": [OnnxStage(directory, k, int8=False, threads=1) for k in ks],
        "onnx-int8": [OnnxStage(directory, k, int8=True, threads=1) for k in ks],
    }


def _item(x: torch.Tensor, state: torch.Tensor | None = None) -> stage_pb2.StageItem:
    item = stage_pb2.StageItem(session_id="s", seq=3, input=tensor_codec.encode(x))
    if state is not None:
        item.state.CopyFrom(tensor_codec.encode(state))
    return item


def _bad_requests() -> dict[str, tuple[int, list[stage_pb2.StageItem]]]:
    """name -> (stage, items): one malformed item after a good one."""
    good0 = _item(torch.zeros(CFG.observation_dim))
    torn = _item(torch.zeros(CFG.observation_dim))
    torn.input.data = torn.input.data[:-4]
    return {
        "empty": (0, []),
        "dtype": (0, [good0, _item(torch.zeros(CFG.observation_dim, dtype=torch.float64))]),
        "bfloat16": (0, [good0, _item(torch.zeros(CFG.observation_dim, dtype=torch.bfloat16))]),
        "shape": (0, [good0, _item(torch.zeros(CFG.observation_dim + 1))]),
        "bytes": (0, [good0, torn]),
        "activations": (1, [_item(torch.zeros(CFG.tokens + 1, CFG.d_model))]),
        "state": (
            1,
            [_item(torch.zeros(CFG.tokens, CFG.d_model), torch.zeros(2, CFG.d_model))],
        ),
        "state_dtype": (
            1,
            [
                _item(
                    torch.zeros(CFG.tokens, CFG.d_model),
                    torch.zeros(CFG.memory_tokens, CFG.d_model, dtype=torch.float16),
                )
            ],
        ),
    }


def _refusal(stage: StageRuntime, items: list[stage_pb2.StageItem]) -> str:
    servicer = StageServicer(stage, "v1")
    with pytest.raises(Aborted) as refused:
        servicer.Forward(stage_pb2.ForwardRequest(items=items, model_version="v1"), CONTEXT)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value.details


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_input_gets_the_same_error_from_every_runtime(
    stages: dict[str, list[StageRuntime]], case: str
) -> None:
    k, items = _bad_requests()[case]
    messages = {name: _refusal(stages[name][k], items) for name in RUNTIMES}
    assert len(set(messages.values())) == 1, messages
    message = messages["torch"]
    assert message.startswith(f"stage {k}: ") and "\n" not in message
    if case not in ("empty", "bytes"):
        assert "session=s seq=3" in message and "must be float32" in message


def test_the_bfloat16_message_names_the_dtype(stages: dict[str, list[StageRuntime]]) -> None:
    _, items = _bad_requests()["bfloat16"]
    assert f"must be float32 [{CFG.observation_dim}], got bfloat16" in _refusal(
        stages["onnx"][0], items
    )


def test_a_good_batch_gets_the_same_answer_from_torch_and_onnx(
    stages: dict[str, list[StageRuntime]],
) -> None:
    gen = torch.Generator().manual_seed(0)
    items = [_item(torch.randn(CFG.observation_dim, generator=gen)) for _ in range(3)]
    request = stage_pb2.ForwardRequest(items=items, model_version="v1", emit_action=True)
    replies = {
        name: StageServicer(stages[name][0], "v1").Forward(request, CONTEXT)
        for name in ("torch", "onnx")
    }
    for got, want in zip(replies["onnx"].results, replies["torch"].results, strict=True):
        for field in ("output", "state", "action"):
            a = tensor_codec.decode(getattr(got, field))
            b = tensor_codec.decode(getattr(want, field))
            assert torch.allclose(a, b, atol=1e-5), field
    no_action = stage_pb2.ForwardRequest(items=items, model_version="v1")
    for name in ("torch", "onnx"):
        reply = StageServicer(stages[name][0], "v1").Forward(no_action, CONTEXT)
        assert not any(r.HasField("action") for r in reply.results), name
