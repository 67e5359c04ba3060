"""Prompts and responses reach spans only where the policy says so, redacted and capped."""

from __future__ import annotations

import orjson
from openai import OpenAI

from gateway.telemetry import attributes as attr
from support.gateway import run_gateway
from support.otlp_receiver import OtlpReceiver

POLICY = """
models:
  - alias: "mock/*"
    deployments: [{provider: mock}]
telemetry:
  capture_content:
    - teams: [research]
      models: ["mock/*"]
      max_bytes: 2048
"""
CONTENT = (attr.GEN_AI_INPUT_MESSAGES, attr.GEN_AI_OUTPUT_MESSAGES, attr.GEN_AI_SYSTEM_INSTRUCTIONS)


def test_content_is_captured_for_the_opted_in_team_only_and_redacted() -> None:
    with (
        OtlpReceiver.running() as otlp,
        run_gateway(POLICY, env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.http_endpoint}) as gw,
    ):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "my email is ada@example.com"},
        ]
        research = OpenAI(base_url=gw.base_url, api_key=gw.create_key("research"), max_retries=0)
        sales = OpenAI(base_url=gw.base_url, api_key=gw.create_key("sales"), max_retries=0)
        research.chat.completions.create(model="mock/echo", messages=messages)  # type: ignore[arg-type]
        stream = research.chat.completions.create(model="mock/echo", messages=messages, stream=True)  # type: ignore[arg-type]
        for _ in stream:
            pass
        sales.chat.completions.create(model="mock/echo", messages=messages)  # type: ignore[arg-type]

        spans = otlp.wait_for(lambda s: len([x for x in s if x.kind == "CLIENT"]) >= 3)
        clients = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
        captured, streamed, not_captured = clients
        for span in (captured, streamed):
            assert orjson.loads(str(span.attributes[attr.GEN_AI_SYSTEM_INSTRUCTIONS])) == [
                {"type": "text", "content": "Be brief."}
            ]
            inputs = orjson.loads(str(span.attributes[attr.GEN_AI_INPUT_MESSAGES]))
            assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "my email is [EMAIL]"}]}]
            outputs = orjson.loads(str(span.attributes[attr.GEN_AI_OUTPUT_MESSAGES]))
            assert outputs == [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "my email is [EMAIL]"}],
                    "finish_reason": "stop",
                }
            ]
        # No span of any kind carries the raw address, and the other team's call carries no content at all.
        assert not any("ada@example.com" in str(value) for s in spans for value in s.attributes.values())
        assert not set(CONTENT) & set(not_captured.attributes)
