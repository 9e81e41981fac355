"""The shard's servicer called directly: a Forward for a model version it does not serve is
refused and counted (actionmesh_shard_version_refusals_total), the version it retires is
still served for a while and not counted."""

from __future__ import annotations

from typing import NoReturn, cast

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import stage_pb2, tensor_codec
from service.shard.stage_servicer import StageServicer
from service.shard.torch_stage import TorchStage

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=2, tokens=4, memory_tokens=1, n_stages=2)
REFUSALS = "actionmesh_shard_version_refusals_total"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code)


CONTEXT = cast(grpc.ServicerContext, Context())


def refusals(stage: int) -> float:
    value = REGISTRY.get_sample_value(REFUSALS, {"stage": str(stage)})
    assert value is not None, "the counter is exposed before any refusal"
    return value


def forward(servicer: StageServicer, version: str) -> stage_pb2.ForwardReply:
    item = stage_pb2.StageItem(
        session_id="s", seq=1, input=tensor_codec.encode(torch.zeros(CFG.observation_dim))
    )
    request = stage_pb2.ForwardRequest(items=[item], model_version=version)
    reply: stage_pb2.ForwardReply = servicer.Forward(request, CONTEXT)
    return reply


def test_a_call_for_another_version_is_refused_and_counted() -> None:
    servicer = StageServicer(TorchStage(ActionModel(CFG).stage(0)), "v1")
    before = refusals(0)
    assert forward(servicer, "v1").model_version == "v1"
    assert refusals(0) == before
    with pytest.raises(Aborted) as refused:
        forward(servicer, "v2")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refusals(0) == before + 1


def test_the_retiring_version_is_served_until_it_retires_then_refused() -> None:
    servicer = StageServicer(TorchStage(ActionModel(CFG).stage(0)), "v1")
    servicer.swap(TorchStage(ActionModel(CFG.model_copy(update={"seed": 1})).stage(0)), "v2", 60.0)
    before = refusals(0)
    assert forward(servicer, "v1").model_version == "v1"  # still retiring
    assert forward(servicer, "v2").model_version == "v2"
    servicer.swap(
        TorchStage(ActionModel(CFG).stage(0)), "v3", 0.0
    )  # v2 retires at once, v1 is gone
    for version in ("v1", "v2"):
        with pytest.raises(Aborted):
            forward(servicer, version)
    assert refusals(0) == before + 2


def test_a_stream_answers_each_request_in_order_and_a_refusal_is_an_item_not_the_end() -> None:
    servicer = StageServicer(TorchStage(ActionModel(CFG).stage(0)), "v1")
    item = stage_pb2.StageItem(
        session_id="s", seq=1, input=tensor_codec.encode(torch.zeros(CFG.observation_dim))
    )
    requests = [
        stage_pb2.ForwardRequest(items=[item], model_version=version)
        for version in ("v1", "v2", "v1")
    ]
    replies = list(servicer.ForwardStream(iter(requests), CONTEXT))
    assert [r.WhichOneof("result") for r in replies] == ["reply", "error", "reply"]
    assert replies[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "serves model v1, not v2" in replies[1].error.message
    assert replies[0].reply.results[0].output == forward(servicer, "v1").results[0].output
