"""The telemetry test backends themselves: the OTLP receiver, Phoenix and Prometheus, fed by the real OTel SDK and
prometheus_client, so a failing gateway telemetry test can be trusted to be about the gateway."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, start_http_server

from support.otlp_receiver import OtlpReceiver, Span
from support.phoenix import start_phoenix
from support.prometheus import scrape_config, start_prometheus
from support.threads import free_port


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver.running() as receiver:
        yield receiver


def emit_request_trace(exporter: SpanExporter) -> tuple[str, str, str]:
    """A gateway-shaped trace: SERVER span → CLIENT span with GenAI attributes, an event and an error status.
    Returns (trace id, server span id, client span id) in hex."""
    provider = TracerProvider(resource=Resource.create({"service.name": "tollgate-test", "deployment.env": "ci"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tollgate.test")
    with tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER) as server:
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 11,
                "gen_ai.request.temperature": 0.25,
                "gen_ai.request.stream": True,
                "gen_ai.response.finish_reasons": ["stop", "length"],
                "tollgate.attempt": 1,
            },
        ) as client:
            client.add_event(
                "gen_ai.evaluation.result", {"gen_ai.evaluation.name": "toxicity", "gen_ai.evaluation.score.value": 0.1}
            )
            client.set_status(Status(StatusCode.ERROR, "upstream said 429"))
    provider.shutdown()
    return (
        format(server.get_span_context().trace_id, "032x"),
        format(server.get_span_context().span_id, "016x"),
        format(client.get_span_context().span_id, "016x"),
    )


def check_request_trace(otlp: OtlpReceiver, ids: tuple[str, str, str], transport: str) -> None:
    trace_id, server_id, client_id = ids
    otlp.wait_for_spans(2)
    assert list(otlp.traces()) == [trace_id]
    server, client = otlp.trace(trace_id)
    assert isinstance(server, Span)
    assert (server.name, server.kind, server.span_id, server.parent_span_id) == (
        "POST /v1/chat/completions",
        "SERVER",
        server_id,
        None,
    )
    assert (client.name, client.kind, client.span_id, client.parent_span_id) == (
        "chat gpt-4o-mini",
        "CLIENT",
        client_id,
        server_id,
    )
    assert otlp.children(server) == [client]
    assert client.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.stream": True,
        "gen_ai.response.finish_reasons": ["stop", "length"],
        "tollgate.attempt": 1,
    }
    event = client.event("gen_ai.evaluation.result")
    assert event.attributes == {"gen_ai.evaluation.name": "toxicity", "gen_ai.evaluation.score.value": 0.1}
    assert client.start_ns <= event.time_ns <= client.end_ns
    assert (client.status_code, client.status_message) == ("ERROR", "upstream said 429")
    assert (server.status_code, server.status_message) == ("UNSET", "")
    assert server.resource["service.name"] == "tollgate-test"
    assert server.resource["deployment.env"] == "ci"
    assert server.scope == "tollgate.test"
    assert 0 < server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert {server.transport, client.transport} == {transport}


def test_http_export_is_decoded(otlp: OtlpReceiver) -> None:
    ids = emit_request_trace(HttpSpanExporter(endpoint=otlp.traces_url))
    check_request_trace(otlp, ids, "http")
    assert otlp.outcomes() == {"accepted": 2}


def test_gzip_http_export_is_decoded(otlp: OtlpReceiver) -> None:
    ids = emit_request_trace(HttpSpanExporter(endpoint=otlp.traces_url, compression=Compression.Gzip))
    check_request_trace(otlp, ids, "http")


def test_grpc_export_is_decoded(otlp: OtlpReceiver) -> None:
    ids = emit_request_trace(GrpcSpanExporter(endpoint=otlp.grpc_endpoint))  # http:// means insecure
    check_request_trace(otlp, ids, "grpc")


def test_raw_gzip_body_and_other_signals(otlp: OtlpReceiver) -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(16)), bytes(range(8)), "raw"
    span.kind = trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    response = httpx.post(otlp.traces_url, content=gzip.compress(request.SerializeToString()), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    [raw] = otlp.spans()
    assert (raw.trace_id, raw.span_id, raw.kind, raw.name) == (
        bytes(range(16)).hex(),
        bytes(range(8)).hex(),
        "INTERNAL",
        "raw",
    )

    protobuf = {"Content-Type": "application/x-protobuf"}
    metrics = httpx.post(
        otlp.http_endpoint + "/v1/metrics", content=ExportMetricsServiceRequest().SerializeToString(), headers=protobuf
    )
    logs = httpx.post(otlp.http_endpoint + "/v1/logs", content=b"", headers=protobuf)
    assert (metrics.status_code, logs.status_code) == (200, 200)
    assert (len(otlp.metrics_requests), len(otlp.logs_requests)) == (1, 1)

    assert httpx.post(otlp.traces_url, content=b"\xff\xff\xff", headers=protobuf).status_code == 400
    assert httpx.post(otlp.traces_url, json={}).status_code == 415
    otlp.clear()
    assert otlp.spans() == [] and otlp.attempts == []


def test_wait_for_reports_what_arrived(otlp: OtlpReceiver) -> None:
    emit_request_trace(HttpSpanExporter(endpoint=otlp.traces_url))
    with pytest.raises(AssertionError, match=r"2 spans .*'chat gpt-4o-mini'"):
        otlp.wait_for(lambda spans: len(spans) > 2, timeout=0.2)
    assert [s.name for s in otlp.spans(kind="CLIENT")] == ["chat gpt-4o-mini"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_unavailable_collector_rejects_and_recovers(otlp: OtlpReceiver, transport: str) -> None:
    def exporter() -> SpanExporter:
        if transport == "http":
            return HttpSpanExporter(endpoint=otlp.traces_url, timeout=1)
        return GrpcSpanExporter(endpoint=otlp.grpc_endpoint, insecure=True, timeout=1)

    otlp.set_behaviour("unavailable")
    emit_request_trace(exporter())
    assert otlp.spans() == []
    assert otlp.outcomes()["rejected"] >= 1

    otlp.set_behaviour("ok")
    ids = emit_request_trace(exporter())
    check_request_trace(otlp, ids, transport)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_hanging_collector_times_the_exporter_out(otlp: OtlpReceiver, transport: str) -> None:
    exporter: SpanExporter
    if transport == "http":
        exporter = HttpSpanExporter(endpoint=otlp.traces_url, timeout=0.5)
    else:
        exporter = GrpcSpanExporter(endpoint=otlp.grpc_endpoint, insecure=True, timeout=0.5)
    otlp.set_behaviour("hang")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    started = time.monotonic()
    with provider.get_tracer("t").start_as_current_span("stuck"):
        pass
    elapsed = time.monotonic() - started
    provider.shutdown()
    assert elapsed < 5
    assert otlp.outcomes()["hung"] >= 1
    otlp.set_behaviour("ok")  # releases the held request, which is dropped, not stored
    time.sleep(0.1)
    assert otlp.spans() == []


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_slow_collector_accepts_late(otlp: OtlpReceiver, transport: str) -> None:
    exporter: SpanExporter
    if transport == "http":
        exporter = HttpSpanExporter(endpoint=otlp.traces_url, timeout=5)
    else:
        exporter = GrpcSpanExporter(endpoint=otlp.grpc_endpoint, timeout=5)
    otlp.set_behaviour("slow", delay=0.3)
    started = time.monotonic()
    ids = emit_request_trace(exporter)
    assert time.monotonic() - started >= 0.3
    check_request_trace(otlp, ids, transport)


def test_exporter_result_reflects_the_receiver(otlp: OtlpReceiver) -> None:
    from opentelemetry.sdk.trace import ReadableSpan

    exporter = HttpSpanExporter(endpoint=otlp.traces_url, timeout=1)
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("one")
    span.end()
    assert isinstance(span, ReadableSpan)
    assert exporter.export([span]) == SpanExportResult.SUCCESS
    otlp.set_behaviour("unavailable")
    assert exporter.export([span]) == SpanExportResult.FAILURE
    exporter.shutdown()


# -- Prometheus ---------------------------------------------------------------------------------------------------


def test_scrape_config_accepts_host_port_and_urls() -> None:
    config = scrape_config(["127.0.0.1:4000", "https://example.test:9/custom/metrics"], "2s")
    first, second = config["scrape_configs"]
    assert (first["scheme"], first["metrics_path"], first["static_configs"]) == (
        "http",
        "/metrics",
        [{"targets": ["127.0.0.1:4000"]}],
    )
    assert (second["scheme"], second["metrics_path"], second["static_configs"][0]["targets"]) == (
        "https",
        "/custom/metrics",
        ["example.test:9"],
    )
    assert config["global"]["scrape_interval"] == config["global"]["scrape_timeout"] == "2s"


def test_prometheus_scrapes_a_team_counter() -> None:
    registry = CollectorRegistry()
    tokens = Counter("demo_tokens", "Tokens by team.", ["team"], registry=registry)
    tokens.labels(team="alpha").inc(42)
    tokens.labels(team="beta").inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with start_prometheus([f"127.0.0.1:{port}"]) as prom:
            assert ":9090" not in prom.url
            [target] = prom.wait_for_targets_up()
            assert target["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"
            rows = prom.wait_for('sum by (team) (demo_tokens_total{team="alpha"})')
            assert [(row["metric"], float(row["value"][1])) for row in rows] == [({"team": "alpha"}, 42.0)]
            tokens.labels(team="alpha").inc(8)
            prom.wait_for('demo_tokens_total{team="alpha"} == 50')
            assert prom.value('demo_tokens_total{team="beta"}') == 7.0
            with pytest.raises(AssertionError, match="bad_data"):
                prom.query("sum(")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- Phoenix --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_phoenix_returns_an_exported_trace() -> None:
    with start_phoenix() as phoenix:
        trace_id, server_id, client_id = emit_request_trace(HttpSpanExporter(endpoint=phoenix.traces_url))
        spans = phoenix.wait_for_trace(trace_id, count=2)
        by_id = {span["context"]["span_id"]: span for span in spans}
        assert set(by_id) == {server_id, client_id}
        server, client = by_id[server_id], by_id[client_id]
        assert {span["context"]["trace_id"] for span in spans} == {trace_id}
        assert (server["name"], server["parent_id"]) == ("POST /v1/chat/completions", None)
        assert (client["name"], client["parent_id"]) == ("chat gpt-4o-mini", server_id)
        assert client["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
        assert client["attributes"]["gen_ai.usage.input_tokens"] == 11
        assert (client["status_code"], client["status_message"]) == ("ERROR", "upstream said 429")
        assert [event["name"] for event in client["events"]] == ["gen_ai.evaluation.result"]
        assert phoenix.spans_for_trace("0" * 32) == []
