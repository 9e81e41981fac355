"""Tracing: off, every call is a no-op on shared objects (its cost is printed, per span); on,
spans nest, cross threads and processes as carriers, and a batch's span hangs under its first
step's span with links from the others'."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.coordinator.batcher import DynamicBatcher
from service.runtime import logs, tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_off_every_call_is_a_shared_no_op() -> None:
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b", {"k": 1})
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    assert carrier == {} and tracing.current() is None and tracing.extracted({"x": "y"}) is None
    assert tracing.server_interceptors() == []
    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        with tracing.span("actionmesh.stage", {"actionmesh.stage": 1}):
            pass
    per_span_ns = (time.perf_counter() - started) / n * 1e9
    print(f"tracing off: {per_span_ns:.0f} ns per span (with its attributes dict)")


def test_spans_nest_and_carry_their_context_across_threads_and_carriers(
    spans: InMemorySpanExporter,
) -> None:
    carrier: dict[str, str] = {}
    with tracing.span("actionmesh.step"):
        parent = tracing.current()
        assert logs.trace_ids() is not None  # log lines carry the trace id now
        with tracing.span("actionmesh.stage", {"actionmesh.stage": 0}):
            tracing.inject(carrier)
    assert "traceparent" in carrier

    def elsewhere() -> None:
        with tracing.span("actionmesh.batch", parent=parent):
            pass

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    with tracing.span("actionmesh.shard.forward", parent=tracing.extracted(carrier)):
        pass
    got = by_name(spans)
    step, stage = got["actionmesh.step"], got["actionmesh.stage"]
    assert stage.parent is not None and stage.parent.span_id == step.context.span_id
    assert got["actionmesh.batch"].parent.span_id == step.context.span_id  # type: ignore[union-attr]
    forward = got["actionmesh.shard.forward"]
    assert forward.parent.span_id == stage.context.span_id  # type: ignore[union-attr]
    assert {s.context.trace_id for s in got.values()} == {step.context.trace_id}
    assert stage.attributes == {"actionmesh.stage": 0}


def test_a_batch_span_is_under_its_first_step_and_linked_from_the_others(
    spans: InMemorySpanExporter,
) -> None:
    busy, release = threading.Event(), threading.Event()

    def run(items: list[int]) -> list[int | Exception]:
        busy.set()
        release.wait(5)
        return items

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_size=8, max_wait_s=0.5, workers=2)

    def first() -> None:
        with tracing.span("first"):
            batcher.submit(1).result(5)  # runs at once in this thread, held in `run`

    thread = threading.Thread(target=first)
    try:
        thread.start()
        assert busy.wait(5)
        futures = []
        for i in (2, 3):  # queued while a batch is in flight: batched together
            with tracing.span(f"step-{i}"):
                futures.append(batcher.submit(i))
        release.set()
        assert [f.result(5).value for f in futures] == [2, 3]
        thread.join(5)
    finally:
        batcher.close()
    got = by_name(spans)
    batches = [s for s in spans.get_finished_spans() if s.name == "actionmesh.batch"]
    (later,) = [b for b in batches if b.attributes and b.attributes["actionmesh.batch_size"] == 2]
    assert later.parent is not None and later.parent.span_id == got["step-2"].context.span_id
    assert [link.context.span_id for link in later.links] == [got["step-3"].context.span_id]
