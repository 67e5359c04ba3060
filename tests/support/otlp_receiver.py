"""A real OTLP receiver on 127.0.0.1 for tests: OTLP/HTTP (protobuf, plain or gzip) and OTLP/gRPC.

It decodes what an exporter sends with the `opentelemetry-proto` message types and keeps each span as a small
frozen `Span` with plain Python values (hex ids, kind and status as names, attributes as str/int/float/bool/list),
so a test reads a trace the way a backend would show it:

    with OtlpReceiver.running() as otlp:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.http_endpoint}  # or otlp.grpc_endpoint with protocol grpc
        ...
        spans = otlp.wait_for_spans(2)
        server, client = otlp.one_trace()  # ...

For a dead or slow collector: `set_behaviour("unavailable")` answers every export with 503 (HTTP) / UNAVAILABLE
(gRPC); `"hang"` holds each export unanswered until the client gives up, the behaviour changes or the receiver stops,
and then drops it; `set_behaviour("slow", delay=2.0)` accepts each export after a delay. Every export request is
counted in `attempts` with its outcome; only accepted ones keep their spans.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from support.threads import LoopThread, free_port

AttributeValue: TypeAlias = "str | bool | int | float | bytes | list[AttributeValue] | dict[str, AttributeValue] | None"
Behaviour = Literal["ok", "unavailable", "hang", "slow"]
Transport = Literal["http", "grpc"]
Signal = Literal["traces", "metrics", "logs"]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER" or "UNSPECIFIED"
    attributes: dict[str, AttributeValue]
    events: tuple[SpanEvent, ...]
    links: tuple[SpanLink, ...]
    status_code: str  # "UNSET", "OK" or "ERROR"
    status_message: str
    resource: dict[str, AttributeValue]
    scope: str  # the instrumentation scope's name
    start_ns: int
    end_ns: int
    trace_state: str
    transport: Transport  # how it reached the receiver

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def event(self, name: str) -> SpanEvent:
        matches = [event for event in self.events if event.name == name]
        assert len(matches) == 1, f"span {self.name!r} has {len(matches)} events named {name!r}: {self.events}"
        return matches[0]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One export request as it arrived, whatever the receiver answered."""

    transport: Transport
    signal: Signal
    outcome: Literal["accepted", "rejected", "hung", "bad_request"]
    spans: int


# -- protobuf → plain values ----------------------------------------------------------------------------------------


def any_value(value: AnyValue) -> AttributeValue:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    plain: AttributeValue = getattr(value, which)
    return plain


def attributes(pairs: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    return {pair.key: any_value(pair.value) for pair in pairs}


def _name(enum: Any, number: int, prefix: str) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


def decode_spans(request: trace_service_pb2.ExportTraceServiceRequest, transport: Transport) -> list[Span]:
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
                        attributes=attributes(span.attributes),
                        events=tuple(
                            SpanEvent(event.name, event.time_unix_nano, attributes(event.attributes))
                            for event in span.events
                        ),
                        links=tuple(
                            SpanLink(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
                            for link in span.links
                        ),
                        status_code=_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        trace_state=span.trace_state,
                        transport=transport,
                    )
                )
    return spans


_REQUEST_TYPES: dict[Signal, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE_TYPES: dict[Signal, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    # aiohttp may already have inflated the body, so look at the bytes, not only at the header.
    if encoding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return body
    return body


# -- the receiver -----------------------------------------------------------------------------------------------------


class OtlpReceiver:
    def __init__(self) -> None:
        self.http_port = free_port()
        self.http_endpoint = f"http://127.0.0.1:{self.http_port}"
        self.grpc_port = 0
        self.grpc_endpoint = ""
        self.attempts: list[Attempt] = []
        self.metrics_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.logs_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self._spans: list[Span] = []
        self._behaviour: Behaviour = "ok"
        self._delay = 0.0
        self._stopping = False
        self._changed = threading.Condition()
        self._loop = LoopThread()
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.Server | None = None
        self._released = asyncio.Event()  # set unless hanging; after this, only changed on the HTTP server's loop
        self._released.set()

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[OtlpReceiver]:
        receiver = cls()
        receiver.start()
        try:
            yield receiver
        finally:
            receiver.stop()

    @property
    def traces_url(self) -> str:
        """The full OTLP/HTTP traces URL, for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTLPSpanExporter(endpoint=)`."""
        return self.http_endpoint + "/v1/traces"

    # -- reading what arrived ---------------------------------------------------------------------------------------

    def spans(self, name: str | None = None, kind: str | None = None) -> list[Span]:
        with self._changed:
            found = list(self._spans)
        return [s for s in found if (name is None or s.name == name) and (kind is None or s.kind == kind)]

    def traces(self) -> dict[str, list[Span]]:
        """Spans grouped by trace id, each trace in start order (parents before their children)."""
        grouped: dict[str, list[Span]] = {}
        for span in sorted(self.spans(), key=lambda s: s.start_ns):
            grouped.setdefault(span.trace_id, []).append(span)
        return grouped

    def trace(self, trace_id: str) -> list[Span]:
        return self.traces().get(trace_id.lower(), [])

    def one_trace(self) -> list[Span]:
        traces = self.traces()
        assert len(traces) == 1, f"expected one trace, got {len(traces)}: {self._summary()}"
        return next(iter(traces.values()))

    def children(self, parent: Span) -> list[Span]:
        return [s for s in self.trace(parent.trace_id) if s.parent_span_id == parent.span_id]

    def wait_for(self, predicate: Callable[[list[Span]], object], timeout: float = 10.0) -> list[Span]:
        """Waits until `predicate(all spans so far)` is true and returns those spans; fails with what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"OTLP receiver: condition not met after {timeout}s; got {self._summary()}")
                self._changed.wait(remaining)
            return list(self._spans)

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[Span]:
        return self.wait_for(lambda spans: len(spans) >= count, timeout)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()
            self.attempts.clear()
            self.metrics_requests.clear()
            self.logs_requests.clear()

    def outcomes(self) -> Counter[str]:
        with self._changed:
            return Counter(attempt.outcome for attempt in self.attempts)

    def _summary(self) -> str:
        spans = [f"{s.kind} {s.name!r} trace={s.trace_id[:8]}" for s in self._spans]
        outcomes = Counter(attempt.outcome for attempt in self.attempts)
        return f"{len(spans)} spans {spans}, export attempts {dict(outcomes)}"

    # -- faults -------------------------------------------------------------------------------------------------------

    def set_behaviour(self, behaviour: Behaviour, delay: float = 1.0) -> None:
        """How exports are answered from now on: "ok" (stored), "unavailable" (HTTP 503 / gRPC UNAVAILABLE, not
        stored), "hang" (held unanswered until the client gives up, the behaviour changes or the receiver stops, then
        dropped) or "slow" (stored and answered after `delay` seconds)."""
        with self._changed:
            self._behaviour = behaviour
            self._delay = delay
            self._changed.notify_all()
        self._loop.loop.call_soon_threadsafe(self._released.clear if behaviour == "hang" else self._released.set)

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._http_handler("traces"))
        app.router.add_post("/v1/metrics", self._http_handler("metrics"))
        app.router.add_post("/v1/logs", self._http_handler("logs"))

        async def start_http() -> None:
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.http_port).start()

        self._loop.run(start_http())

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), self._grpc)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self.grpc_endpoint = f"http://127.0.0.1:{self.grpc_port}"
        self._grpc.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._loop.loop.call_soon_threadsafe(self._released.set)
        if self._grpc is not None:
            self._grpc.stop(grace=0.5).wait(5)
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.stop()

    # -- shared export logic ----------------------------------------------------------------------------------------

    def _hold(self, still_wanted: Callable[[], bool]) -> None:
        """Blocks while the behaviour is "hang", the client still waits and the receiver runs."""
        with self._changed:
            while self._behaviour == "hang" and not self._stopping and still_wanted():
                self._changed.wait(0.05)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._changed:
            while not self._stopping and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)

    def _accept(self, signal: Signal, request: Any, transport: Transport) -> None:
        with self._changed:
            count = 0
            if signal == "traces":
                spans = decode_spans(request, transport)
                count = len(spans)
                self._spans.extend(spans)
            elif signal == "metrics":
                self.metrics_requests.append(request)
            else:
                self.logs_requests.append(request)
            self.attempts.append(Attempt(transport, signal, "accepted", count))
            self._changed.notify_all()

    def _record(self, transport: Transport, signal: Signal, outcome: Any) -> None:
        with self._changed:
            self.attempts.append(Attempt(transport, signal, outcome, 0))
            self._changed.notify_all()

    # -- OTLP/HTTP ----------------------------------------------------------------------------------------------------

    def _http_handler(self, signal: Signal) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            body = _decompress(await request.read(), request.headers.get("Content-Encoding", ""))
            content_type = request.headers.get("Content-Type", "")
            if not content_type.startswith("application/x-protobuf"):
                self._record("http", signal, "bad_request")
                return web.Response(status=415, text="this receiver decodes application/x-protobuf only")
            if self._behaviour == "hang":
                self._record("http", signal, "hung")
                await self._released.wait()
                return web.Response(status=503, text="collector hung, export dropped")
            if self._behaviour == "slow":
                await asyncio.sleep(self._delay)
            if self._behaviour == "unavailable":
                self._record("http", signal, "rejected")
                return web.Response(status=503, headers={"Retry-After": "1"}, text="collector unavailable")
            message = _REQUEST_TYPES[signal]()
            try:
                message.ParseFromString(body)
            except DecodeError as exc:
                self._record("http", signal, "bad_request")
                return web.Response(status=400, text=f"not an OTLP protobuf message: {exc}")
            self._accept(signal, message, "http")
            return web.Response(
                body=_RESPONSE_TYPES[signal]().SerializeToString(), content_type="application/x-protobuf"
            )

        return handle

    # -- OTLP/gRPC ----------------------------------------------------------------------------------------------------

    def _grpc_export(self, signal: Signal, request: Any, context: grpc.ServicerContext) -> Any:
        if self._behaviour == "hang":
            self._record("grpc", signal, "hung")
            self._hold(context.is_active)
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector hung, export dropped")
        if self._behaviour == "slow":
            self._pause(self._delay)
        if self._behaviour == "unavailable":
            self._record("grpc", signal, "rejected")
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector unavailable")
        self._accept(signal, request, "grpc")
        return _RESPONSE_TYPES[signal]()


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.receiver._grpc_export("traces", request, context)


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.receiver._grpc_export("metrics", request, context)


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.receiver._grpc_export("logs", request, context)
