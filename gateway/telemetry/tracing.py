"""Traces: a SERVER span per inbound request, a CLIENT span per upstream attempt as its child.

W3C trace context in, W3C trace context out. The caller's span is only ever a parent: the gateway never ends it.
With no OTLP endpoint configured, no span objects are created at all; the trace id is still taken from the
caller's `traceparent` (or minted) so every response can carry `x-tollgate-trace-id`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from gateway import __version__
from gateway.settings import Settings
from gateway.telemetry.export import CountingBatchSpanProcessor

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")


@dataclass(frozen=True, slots=True)
class Parent:
    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: str | None) -> Parent | None:
    """W3C `traceparent`; None when absent or invalid (an invalid header starts a new trace, per the spec)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return Parent(trace_id, span_id, bool(int(match.group(4), 16) & 1))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def build_sampler(name: str, arg: float) -> Sampler:
    ratio = TraceIdRatioBased(arg)
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }
    return samplers[name]


def build_exporter(settings: Settings) -> SpanExporter:
    assert settings.otlp_traces_endpoint is not None
    headers = dict(settings.otlp_headers)
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        endpoint = settings.otlp_traces_endpoint
        insecure = endpoint.startswith("http://")
        return GrpcExporter(
            endpoint=endpoint.removeprefix("http://").removeprefix("https://"),
            insecure=insecure,
            headers=headers or None,
            timeout=settings.otlp_timeout_seconds,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(
        endpoint=settings.otlp_traces_endpoint, headers=headers or None, timeout=settings.otlp_timeout_seconds
    )


@dataclass(slots=True)
class RequestTrace:
    """The trace of one inbound request: its ids and, when tracing is on, its SERVER span."""

    trace_id: int
    span: Span | None
    sampled: bool
    # The caller's `traceparent`, forwarded upstream as is when the gateway makes no spans of its own.
    incoming: str | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"


class Tracing:
    def __init__(
        self,
        settings: Settings,
        *,
        exporter: SpanExporter | None = None,
        on_drop: Callable[[int], None] = lambda n: None,
        on_failure: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._random = random.Random()
        self.processor: CountingBatchSpanProcessor | None = None
        if exporter is None and settings.otlp_traces_endpoint:
            exporter = build_exporter(settings)
        self.enabled = exporter is not None
        self.provider: TracerProvider | None = None
        if exporter is not None:
            resource = Resource.create({"service.name": settings.otel_service_name, "service.version": __version__})
            self.provider = TracerProvider(
                sampler=build_sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
                resource=resource,
                shutdown_on_exit=False,
            )
            self.processor = CountingBatchSpanProcessor(exporter, on_drop=on_drop, on_failure=on_failure)
            self.provider.add_span_processor(self.processor)
            self.tracer: trace.Tracer = self.provider.get_tracer("tollgate", __version__)

    def start_request(
        self, name: str, traceparent: str | None, attributes: Mapping[str, Any], *, record: bool = True
    ) -> RequestTrace:
        parent = parse_traceparent(traceparent)
        if not self.enabled or not record:
            trace_id = parent.trace_id if parent else self._random.getrandbits(128) or 1
            return RequestTrace(trace_id, None, parent.sampled if parent else False, traceparent if parent else None)
        context = None
        if parent is not None:
            remote = SpanContext(
                parent.trace_id,
                parent.span_id,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT),
            )
            # Only a context: the caller's span is theirs to end.
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        span_context = span.get_span_context()
        return RequestTrace(span_context.trace_id, span, span_context.trace_flags.sampled)

    def start_attempt(self, request: RequestTrace, name: str, attributes: Mapping[str, Any]) -> Span | None:
        if request.span is None:
            return None
        context = trace.set_span_in_context(request.span)
        return self.tracer.start_span(name, context=context, kind=SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def traceparent_for(attempt: Span | None) -> str | None:
        """The `traceparent` to send upstream: the attempt's own span, so the upstream's spans nest under it."""
        if attempt is None:
            return None
        ctx = attempt.get_span_context()
        return format_traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags.sampled)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def fail_span(span: Span | None, error_type: str, message: str | None = None) -> None:
    if span is None:
        return
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))
