"""Integration tests against a real model: SmolLM2-135M-Instruct served by llama.cpp (xllamacpp) on localhost.

The first group talks to the model server directly with the official ``openai`` SDK and pins down the upstream
behaviour the gateway relies on (streaming shape, usage reporting). The last test streams a real completion
through the gateway; it is skipped until ``tests/support/gateway.py`` exists.

Needs ``tests/`` on ``sys.path`` (``support.*`` imports), e.g. ``PYTHONPATH=tests``.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from support.model_server import ModelServer, start_model_server

pytestmark = pytest.mark.slow

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with start_model_server() as server:
        yield server


@pytest.fixture
def client(model_server: ModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=model_server.base_url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_lists_the_model(client: openai.OpenAI, model_server: ModelServer) -> None:
    assert [m.id for m in client.models.list()] == [model_server.model]


def test_streamed_chat_completion(client: openai.OpenAI, model_server: ModelServer) -> None:
    contents: list[str] = []
    finish_reasons: list[str] = []
    with client.chat.completions.create(
        model=model_server.model, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
    ) as stream:
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            assert chunk.usage is None  # not asked for: see the next test
            for choice in chunk.choices:
                if choice.delta.content:
                    contents.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish_reasons.append(choice.finish_reason)
    assert "".join(contents).strip()
    assert finish_reasons in (["length"], ["stop"])


def test_streamed_usage_when_include_usage(client: openai.OpenAI, model_server: ModelServer) -> None:
    """llama.cpp honours stream_options.include_usage the OpenAI way: one last chunk, no choices, with usage."""
    with client.chat.completions.create(
        model=model_server.model,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    *content_chunks, last = chunks
    assert all(c.usage is None for c in content_chunks)
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert 0 < last.usage.completion_tokens <= 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    generated = sum(1 for c in content_chunks for choice in c.choices if choice.delta.content)
    assert generated <= last.usage.completion_tokens


def test_non_streaming_usage(client: openai.OpenAI, model_server: ModelServer) -> None:
    response = client.chat.completions.create(model=model_server.model, messages=MESSAGES, max_tokens=16, temperature=0)
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in ("length", "stop")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 16
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streams_through_the_gateway(model_server: ModelServer) -> None:
    """A real completion streamed through Tollgate, routed by alias to the local model server."""
    gateway = pytest.importorskip("support.gateway", reason="tests/support/gateway.py (run_gateway) not there yet")
    policy = f"""
version: 1
models:
  - alias: smollm
    deployments:
      - provider: openai
        model: {model_server.model}
        api_base: {model_server.base_url}
"""
    with gateway.run_gateway(policy) as gw:
        key = gw.create_key("integration")
        with openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=60) as c:
            contents: list[str] = []
            finish_reasons: list[str] = []
            with c.chat.completions.create(
                model="smollm", messages=MESSAGES, max_tokens=16, temperature=0, stream=True
            ) as stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            contents.append(choice.delta.content)
                        if choice.finish_reason is not None:
                            finish_reasons.append(choice.finish_reason)
    assert "".join(contents).strip()
    assert finish_reasons in (["length"], ["stop"])
