"""One step's whole trace across processes: the robot's span (this process, the SDK's
in-memory exporter) -> its gRPC client span -> the coordinator's server span -> step -> plan,
batch -> each stage -> that stage's shard -> and commit -> Redis; the coordinator and shards
export over OTLP to a receiver in this test (tests/support/otlp_receiver.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
import torch
from opentelemetry.instrumentation.grpc import client_interceptor, intercept_channel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chaos.reference import open_session, step
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2_grpc
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    traced = {"otlp_endpoint": receiver.endpoint}
    with pytest.MonkeyPatch.context() as env:
        env.setitem(os.environ, "OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms
        with LocalCluster(
            cluster_settings(tmp_path_factory.mktemp("traced")),
            SMALL_MODEL,
            coordinator_overrides=traced,
            shard_overrides=traced,
        ) as running:
            yield running


def tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[str]:
    """Indented `name [service] attributes` lines under `root`, children in name order."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_id, []).append(span)

    def lines(span: ReceivedSpan, depth: int) -> list[str]:
        shown = {k: v for k, v in span.attributes.items() if k.startswith(("actionmesh.", "db."))}
        own = [f"{'  ' * depth}{span.name} [{span.service}] {shown if shown else ''}".rstrip()]
        kids = sorted(children.get(span.span_id, []), key=lambda s: (s.name, str(s.attributes)))
        return own + [line for kid in kids for line in lines(kid, depth + 1)]

    return lines(root, 0)


def test_one_step_is_one_tree_from_the_robot_to_every_shard_and_redis(
    cluster: LocalCluster, receiver: OtlpReceiver
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    robot = provider.get_tracer("robot")
    interceptor = client_interceptor(tracer_provider=provider)
    with grpc.insecure_channel(cluster.address) as plain:
        stub = session_pb2_grpc.SessionServiceStub(intercept_channel(plain, interceptor))
        sid = open_session(stub)
        obs = torch.zeros(SMALL_MODEL.observation_dim)
        step(stub, sid, 1, obs)
        with robot.start_as_current_span("robot.step") as robot_span:
            step(stub, sid, 2, obs)
    trace_id = format(robot_span.get_span_context().trace_id, "032x")
    ours = [
        ReceivedSpan(
            trace_id=format(s.context.trace_id, "032x"),
            span_id=format(s.context.span_id, "016x"),
            parent_id=format(s.parent.span_id, "016x") if s.parent else "",
            name=s.name,
            service="robot (test)",
        )
        for s in exporter.get_finished_spans()
        if s.context.trace_id == robot_span.get_span_context().trace_id
    ]

    def the_trace() -> list[ReceivedSpan]:
        return ours + [s for s in receiver.spans() if s.trace_id == trace_id]

    def complete() -> bool:
        names = [s.name for s in the_trace()]
        return names.count("actionmesh.shard.forward") == SMALL_MODEL.n_stages and (
            "actionmesh.commit" in names
        )

    wait_for(complete, 30, "every process exported its spans of the step")
    spans = the_trace()
    (root,) = [s for s in spans if s.parent_id == ""]
    text = tree(spans, root)
    print("\n" + "\n".join(text))
    by_id = {s.span_id: s for s in spans}

    def chain(span: ReceivedSpan) -> list[str]:
        names = []
        while span.parent_id:
            span = by_id[span.parent_id]
            names.append(span.name)
        return names

    method = "/actionmesh.v1.SessionService/Step"
    step_span = next(s for s in spans if s.name == "actionmesh.step")
    assert chain(step_span) == [method, method, "robot.step"]  # server, client, robot
    assert by_id[step_span.parent_id].service == "actionmesh-coordinator"
    forwards = [s for s in spans if s.name == "actionmesh.shard.forward"]
    assert sorted(s.attributes["actionmesh.stage"] for s in forwards) == [0, 1, 2]
    for forward in forwards:
        assert forward.service == "actionmesh-shard"
        stage = by_id[forward.parent_id]
        assert stage.name == "actionmesh.stage", chain(forward)
        assert stage.attributes["actionmesh.stage"] == forward.attributes["actionmesh.stage"]
        assert chain(stage)[:2] == ["actionmesh.batch", "actionmesh.step"]
    commit = next(s for s in spans if s.name == "actionmesh.commit")
    assert by_id[commit.parent_id] is step_span
    assert any(
        s.parent_id == commit.span_id and s.attributes.get("db.system") == "redis" for s in spans
    ), "the commit's Redis call"
    assert any(s.name == "actionmesh.plan" and s.parent_id == step_span.span_id for s in spans)
    # The session id is a credential: spans and logs carry 8 characters of it, never all.
    assert step_span.attributes["actionmesh.session"] == sid[:8]
    assert cluster.coordinator is not None
    assert sid not in cluster.coordinator.log_path.read_text()
