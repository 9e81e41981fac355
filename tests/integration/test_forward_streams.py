"""The coordinator's stage client on a real shard process, over ForwardStream: answers equal
the unary call's, a refusal keeps the stream, and a paused shard costs one timeout (the
watchdog cancels the stream), after which a resumed shard is reached on a new one."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.coordinator.routing.stage_client import StageClient, StageTimeout, VersionRefused
from service.local.child_process import ChildProcess
from service.proto import stage_pb2, tensor_codec

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 0.3
SLACK_S = 1.0  # the watchdog's polling and a loaded machine


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    logs = tmp_path_factory.mktemp("logs")
    child = ChildProcess(
        "stream-shard",
        ChildProcess.actionmesh("shard", "--stage", "1", "--n-stages", "3", "--port", "0"),
        Path(logs),
    ).start()
    child.wait_ready(60)
    yield child
    child.signal(signal.SIGCONT)
    child.stop()


def request(version: str) -> stage_pb2.ForwardRequest:
    gen = torch.Generator().manual_seed(0)
    item = stage_pb2.StageItem(
        session_id="s",
        seq=1,
        input=tensor_codec.encode(torch.randn(32, 256, generator=gen)),
        state=tensor_codec.encode(torch.randn(4, 256, generator=gen)),
    )
    return stage_pb2.ForwardRequest(items=[item], model_version=version)


def test_stream_answers_equal_unary_ones_and_a_refusal_keeps_the_stream(
    shard: ChildProcess,
) -> None:
    address = f"127.0.0.1:{shard.ports['grpc_port']}"
    streamed, unary = StageClient(1, address), StageClient(1, address)
    unary._unary_only = True
    try:
        version = streamed.info(5).model_version
        want = unary.forward(request(version), 5).results[0]
        assert streamed.forward(request(version), 5).results[0] == want
        with pytest.raises(VersionRefused, match="FAILED_PRECONDITION"):
            streamed.forward(request("not-" + version), 5)
        assert streamed.forward(request(version), 5).results[0] == want
        assert streamed._streams._open == 1, "one stream served all three calls"
    finally:
        streamed.close()
        unary.close()


def test_a_paused_shard_costs_one_timeout_and_is_reached_again_once_resumed(
    shard: ChildProcess,
) -> None:
    client = StageClient(1, f"127.0.0.1:{shard.ports['grpc_port']}")
    try:
        version = client.info(5).model_version
        client.forward(request(version), 5)
        shard.signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StageTimeout, match="no reply in time"):
            client.forward(request(version), TIMEOUT_S)
        took = time.monotonic() - started
        shard.signal(signal.SIGCONT)
        assert TIMEOUT_S <= took < TIMEOUT_S + SLACK_S, took
        assert client.forward(request(version), 5).results, "a new stream reaches it"
    finally:
        shard.signal(signal.SIGCONT)
        client.close()
