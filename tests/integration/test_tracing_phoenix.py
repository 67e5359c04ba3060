"""A real trace backend, Arize Phoenix, receives the gateway's spans over OTLP/HTTP and returns the call's trace by the
id the gateway gave the client. Gateway as a real process, in front of the fake upstream."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from support.fake_openai import FakeOpenAI, Reply
from support.gateway import gateway_process
from support.phoenix import start_phoenix

POLICY = """
defaults: {{retries: 1}}
models:
  - alias: gpt-test
    deployments:
      - {{name: fake, provider: openai, api_base: '{upstream}', model: gpt-4o-mini}}
"""


@pytest.mark.slow
def test_phoenix_returns_the_gateway_trace_of_a_retried_call(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY.format(upstream=fake_openai.base_url))
    with start_phoenix() as phoenix:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "tollgate-phoenix-test",
        }
        with gateway_process(policy_path, tmp_path, env) as process:
            key = process.gateway.create_key("phoenix-team")
            caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
            fake_openai.enqueue(Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}}))
            response = httpx.post(
                process.gateway.base_url + "/chat/completions",
                json={"model": "gpt-test", "messages": [{"role": "user", "content": "hello phoenix"}], "max_tokens": 9},
                headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{caller_trace}-{caller_span}-01"},
                timeout=30,
            )
            assert response.status_code == 200
            trace_id = response.headers["x-tollgate-trace-id"]
            assert trace_id == caller_trace

            spans = phoenix.wait_for_trace(trace_id, count=3)
        assert len(spans) == 3
        assert {span["context"]["trace_id"] for span in spans} == {trace_id}
        [server] = [span for span in spans if span["name"] == "POST /v1/chat/completions"]
        clients = sorted(
            (span for span in spans if span["name"] == "chat gpt-4o-mini"),
            key=lambda span: span["attributes"]["tollgate.attempt"],
        )
        assert len(clients) == 2
        first, second = clients
        assert server["parent_id"] == caller_span
        assert {first["parent_id"], second["parent_id"]} == {server["context"]["span_id"]}
        assert (first["attributes"]["tollgate.attempt"], second["attributes"]["tollgate.attempt"]) == (1, 2)
        assert first["status_code"] == "ERROR"
        assert first["attributes"]["error.type"] == "500"
        assert second["status_code"] != "ERROR"
        a = second["attributes"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "gpt-4o-mini"
        assert a["gen_ai.request.max_tokens"] == 9
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (11, 2)
        assert a["tollgate.cost_usd"] > 0
        assert server["attributes"]["tollgate.team"] == "phoenix-team"
        assert server["attributes"]["http.response.status_code"] == 200
        assert phoenix.spans_for_trace(secrets.token_hex(16)) == []
