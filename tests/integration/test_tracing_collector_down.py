"""A dead, hung or missing trace collector never slows requests down: spans are exported off the request path, and
what the collector did not take is counted on /metrics. Gateway as a real process, in front of the fake upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.fake_openai import FakeOpenAI
from support.gateway import GatewayProcess, gateway_process
from support.otlp_receiver import OtlpReceiver
from support.threads import free_port

REQUESTS = 50
# Generous: a request through the gateway to the local fake takes a few milliseconds. Behaviour, not a benchmark.
MAX_SECONDS_PER_REQUEST = 1.0
PROTOCOLS = {"http": "http/protobuf", "grpc": "grpc"}


def policy(upstream: str) -> str:
    return f"""
models:
  - alias: gpt-test
    deployments:
      - {{name: fake, provider: openai, api_base: '{upstream}', model: gpt-4o-mini}}
"""


@contextmanager
def gateway_exporting_to(endpoint: str, protocol: str, data: Path, upstream: str) -> Iterator[GatewayProcess]:
    policy_path = data / "policy.yaml"
    policy_path.write_text(policy(upstream))
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        # Each export gives up after half a second, so the test sees failures soon; requests must not care.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
    }
    with gateway_process(policy_path, data, env) as process:
        yield process


def export_counters(process: GatewayProcess) -> dict[str, float]:
    gateway = process.gateway
    response = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.admin_key}"})
    response.raise_for_status()
    wanted = {"tollgate_span_export_dropped_total", "tollgate_span_export_failures_total"}
    values = {name: 0.0 for name in wanted}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in wanted:
                values[sample.name] += sample.value
    return values


def wait_for_lost_spans(process: GatewayProcess, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    counters = export_counters(process)
    while sum(counters.values()) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        counters = export_counters(process)
    return counters


def timed_calls(process: GatewayProcess, key: str, count: int = REQUESTS) -> list[str]:
    """`count` sequential chat calls, each of which must succeed within the bound; returns their trace ids."""
    trace_ids = []
    with httpx.Client(base_url=process.gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(count):
            started = time.monotonic()
            response = client.post(
                "/v1/chat/completions",
                json={"model": "gpt-test", "messages": [{"role": "user", "content": "still there?"}]},
            )
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert elapsed < MAX_SECONDS_PER_REQUEST, f"a request took {elapsed:.2f}s with the collector down"
            trace_ids.append(response.headers["x-tollgate-trace-id"])
    return trace_ids


@pytest.mark.parametrize("behaviour", ["unavailable", "hang"])
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_requests_stay_fast_while_the_collector_fails_and_lost_spans_are_counted(
    fake_openai: FakeOpenAI, tmp_path: Path, transport: str, behaviour: str
) -> None:
    with OtlpReceiver.running() as otlp:
        otlp.set_behaviour(behaviour)  # type: ignore[arg-type]
        endpoint = otlp.http_endpoint if transport == "http" else otlp.grpc_endpoint
        with gateway_exporting_to(endpoint, PROTOCOLS[transport], tmp_path, fake_openai.base_url) as process:
            key = process.gateway.create_key("collector-down")
            timed_calls(process, key)
            counters = wait_for_lost_spans(process)
            assert counters["tollgate_span_export_failures_total"] > 0, counters
            expected_outcome = "rejected" if behaviour == "unavailable" else "hung"
            assert otlp.outcomes()[expected_outcome] >= 1
            assert otlp.spans() == []

            # Once the collector is back, the next calls' spans reach it.
            otlp.set_behaviour("ok")
            [trace_id] = timed_calls(process, key, count=1)
            otlp.wait_for(lambda spans: any(s.trace_id == trace_id and s.kind == "SERVER" for s in spans), 15)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_requests_stay_fast_when_nothing_listens_at_the_collector_address(
    fake_openai: FakeOpenAI, tmp_path: Path, transport: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with gateway_exporting_to(closed, PROTOCOLS[transport], tmp_path, fake_openai.base_url) as process:
        timed_calls(process, process.gateway.create_key("collector-missing"))
        counters = wait_for_lost_spans(process)
        assert counters["tollgate_span_export_failures_total"] > 0, counters
        assert process.process.poll() is None
