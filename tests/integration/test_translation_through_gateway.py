"""The OpenAI SDK through the gateway to servers that speak Anthropic's and Gemini's wire formats (llm-katan)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from gateway.upstream.translated import READONLY_WARNING
from support.gateway import RunningGateway, run_gateway
from support.katan import start_katan

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(f"ignore:{READONLY_WARNING}:UserWarning")]

POLICY = """
models:
  - alias: "claude-*"
    deployments:
      - {{name: anthropic, provider: anthropic, api_base: "{url}", api_key_env: ANTHROPIC_API_KEY}}
  - alias: gemini-flash
    deployments:
      - name: gemini
        provider: gemini
        model: gemini-test
        api_base: "{url}/v1beta"
        api_key_env: GEMINI_API_KEY
        headers: {{authorization: "Bearer test-key"}}
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with (
        start_katan() as katan,
        run_gateway(
            POLICY.format(url=katan.url), env={"ANTHROPIC_API_KEY": "sk-ant-test", "GEMINI_API_KEY": "test-key"}
        ) as gw,
    ):
        yield gw


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key=gateway.create_key("translation"), max_retries=0)


def test_anthropic_route_answers_in_openai_shape(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "Hello there"}], max_tokens=50
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert "Hello there" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_anthropic_route_streams_openai_chunks(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Hello there" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_gemini_route_answers_in_openai_shape(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert "Hello there" in (completion.choices[0].message.content or "")
