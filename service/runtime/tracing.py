"""OpenTelemetry traces: off and free unless an OTLP endpoint is configured.

Off (the default), `span()` hands back one shared no-op context manager, `current()` and
`extracted()` None, `inject()` writes nothing, and no opentelemetry module is even imported:
the step path pays a function call and a None check per span (see docs/observability.md for
the measured cost).

On (`configure(endpoint, ...)`, or `start(provider)` in tests), spans go to the provider's
processors (OTLP over gRPC, batched), gRPC calls get client and server spans (health checks
and the long-lived streams excluded: a stream's span would last as long as the stream; their
messages carry their own context), and redis and botocore calls get spans under the current
one. Context crosses threads as `current()` values and processes in W3C `traceparent` carriers
(`inject`, `extracted`): in gRPC metadata for unary calls, in the message for ForwardStream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import grpc

from service.runtime import logs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

TRACER_NAME = "actionmesh"
# Streams: one span per stream would live as long as the stream; their messages are traced.
_UNTRACED_METHODS = ("StreamSteps", "ForwardStream")
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()

_tracer: Tracer | None = None
_provider: TracerProvider | None = None

AttributeValue = str | int | float | bool


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: object | None = None,
    links: Sequence[object] = (),
) -> AbstractContextManager[Any]:
    """A span around a `with` block (the current span inside it); `parent` a context from
    current()/extracted() (default: the current one), `links` more such contexts (steps that
    share a batch). When tracing is off: a shared no-op."""
    if _tracer is None:
        return _NO_SPAN
    return _started(_tracer, name, attributes, parent, links)


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set attributes of the current span (learnt after it started)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(dict(attributes))


def current() -> object | None:
    """The current context, to parent spans started in another thread; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current span's context (traceparent, tracestate) into `carrier`."""
    if _tracer is None:
        return
    from opentelemetry import propagate

    propagate.inject(carrier)


def extracted(carrier: Mapping[str, str]) -> object | None:
    """The context a carrier (inject's output) holds; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    return propagate.extract(dict(carrier))


def from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> object | None:
    """The context a gRPC call's metadata holds (binary headers ignored); None when off."""
    if _tracer is None:
        return None
    return extracted({k: v for k, v in metadata or () if isinstance(v, str)})


def server_interceptors() -> list[grpc.ServerInterceptor[Any, Any]]:
    """For grpc.server(interceptors=...): a server span per unary call, parented by the
    caller's metadata. None when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import filters, server_interceptor

    untraced = filters.any_of(
        filters.health_check(), *(filters.method_name(m) for m in _UNTRACED_METHODS)
    )
    interceptor = server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=filters.negate(untraced)
    )
    return [interceptor]


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with a client span per unary call and its context in the call's metadata."""
    if _provider is None:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, filters
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    untraced = filters.any_of(*(filters.method_name(m) for m in _UNTRACED_METHODS))
    interceptor = client_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=filters.negate(untraced)
    )
    traced: grpc.Channel = intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
    return traced


def configure(
    endpoint: str | None,
    service: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    sample_ratio: float = 1.0,
) -> None:
    """Turn tracing on, exporting over OTLP/gRPC to `endpoint` (http://host:4317), if one is
    given; call before any gRPC server, channel or Redis client is made."""
    if endpoint is None:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, **(attributes or {})}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        )
    )
    start(provider)
    log.info("tracing on: OTLP to %s as %s (sampling %.3g)", endpoint, service, sample_ratio)


def start(provider: TracerProvider) -> None:
    """Trace into `provider` from now on: our spans, and redis and botocore calls."""
    global _tracer, _provider
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    # Not set as the global provider (it can be set once per process): everything that makes
    # spans is handed this one.
    _provider, _tracer = provider, provider.get_tracer(TRACER_NAME)
    for instrumentor in (RedisInstrumentor(), BotocoreInstrumentor()):  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:  # by an earlier start (tests)
            instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=provider)
    logs.trace_ids = _current_ids


def shutdown() -> None:
    """Export what is buffered and turn tracing off (at a graceful stop)."""
    global _tracer, _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (RedisInstrumentor(), BotocoreInstrumentor()):  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _provider.shutdown()
    _tracer = _provider = None
    logs.trace_ids = logs.no_trace


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@contextlib.contextmanager
def _started(
    tracer: Tracer,
    name: str,
    attributes: Mapping[str, AttributeValue] | None,
    parent: object | None,
    links: Sequence[object],
) -> Any:
    from opentelemetry import trace
    from opentelemetry.context import Context

    span_links = []
    for linked in links:
        linked_context = trace.get_current_span(linked).get_span_context()  # type: ignore[arg-type]
        if linked_context.is_valid:
            span_links.append(trace.Link(linked_context))
    with tracer.start_as_current_span(
        name,
        context=parent if isinstance(parent, Context) else None,
        attributes=dict(attributes) if attributes else None,
        links=span_links,
    ) as started:
        yield started
