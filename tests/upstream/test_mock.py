"""The mock provider: deterministic OpenAI-shaped answers chosen by model name."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson
import pytest

from gateway.exceptions import UpstreamTimeout, UpstreamUnavailable
from gateway.protocol.sse import EventSplitter
from gateway.routing import Deployment
from gateway.upstream.base import UpstreamCall
from gateway.upstream.mock import MockProvider

DEPLOYMENT = Deployment(name="mock", provider="mock", model="{alias}", timeout=0.2)


def call(endpoint: str, body: dict[str, Any], stream: bool = False) -> UpstreamCall:
    return UpstreamCall(DEPLOYMENT, endpoint, body, orjson.dumps(body), stream)


def chat(model: str, text: str = "the quick brown fox", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def events_of(response: Any) -> list[Any]:
    splitter = EventSplitter()
    payloads = []
    async for chunk in response.iter_chunks():
        payloads.extend(splitter.feed(chunk))
    return [p if p == b"[DONE]" else orjson.loads(p) for p in payloads]


async def test_echo_answers_the_last_user_message_with_usage() -> None:
    response = await MockProvider().send(call("chat/completions", chat("mock/echo")))
    body = orjson.loads(await response.read())
    assert response.status == 200
    assert body["choices"][0]["message"]["content"] == "the quick brown fox"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


async def test_answers_are_deterministic() -> None:
    first = orjson.loads(await (await MockProvider().send(call("chat/completions", chat("mock/echo")))).read())
    second = orjson.loads(await (await MockProvider().send(call("chat/completions", chat("mock/echo")))).read())
    assert first["id"] == second["id"] and first["choices"] == second["choices"]


async def test_stream_sends_role_words_finish_usage_and_done() -> None:
    body = chat("mock/echo", stream=True, stream_options={"include_usage": True})
    events = await events_of(await MockProvider().send(call("chat/completions", body, stream=True)))
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"])
    assert text == "the quick brown fox"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 4
    assert events[-1] == b"[DONE]"


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    events = await events_of(await MockProvider().send(call("chat/completions", chat("mock/echo"), stream=True)))
    assert all("usage" not in e for e in events if e != b"[DONE]")


async def test_tools_produce_a_tool_call() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    response = await MockProvider().send(call("chat/completions", chat("mock/echo", tools=tools)))
    choice = orjson.loads(await response.read())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert orjson.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"input": "the quick brown fox"}


async def test_n_gives_n_choices() -> None:
    response = await MockProvider().send(call("chat/completions", chat("mock/echo", n=3)))
    assert [c["index"] for c in orjson.loads(await response.read())["choices"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("model", "status"), [("mock/error-429", 429), ("mock/error-503", 503), ("mock/error-400", 400)]
)
async def test_error_models_answer_their_status_in_openai_shape(model: str, status: int) -> None:
    response = await MockProvider().send(call("chat/completions", chat(model)))
    assert response.status == status
    error = orjson.loads(await response.read())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (response.headers.get("retry-after") == "1") is (status == 429)


async def test_timeout_model_times_out_after_the_deployment_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await MockProvider().send(call("chat/completions", chat("mock/timeout")))
    assert 0.15 < time.monotonic() - started < 1.0


async def test_drop_midstream_breaks_after_three_words() -> None:
    response = await MockProvider().send(
        call("chat/completions", chat("mock/drop-midstream", "a b c d e"), stream=True)
    )
    seen = []
    with pytest.raises(UpstreamUnavailable):
        async for chunk in response.iter_chunks():
            seen.append(chunk)
    assert len(seen) == 4  # the role chunk and three words


async def test_embeddings_are_unit_vectors_and_base64_decodes_to_the_same_floats() -> None:
    floats = orjson.loads(
        await (await MockProvider().send(call("embeddings", {"model": "mock/e", "input": ["a", "b"]}))).read()
    )
    vector = floats["data"][0]["embedding"]
    assert len(vector) == 8 and abs(sum(v * v for v in vector) - 1) < 1e-9
    encoded = orjson.loads(
        await (
            await MockProvider().send(
                call("embeddings", {"model": "mock/e", "input": ["a"], "encoding_format": "base64"})
            )
        ).read()
    )
    decoded = struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert decoded == pytest.approx(vector, rel=1e-6)


async def test_unknown_endpoint_is_404() -> None:
    response = await MockProvider().send(call("audio/speech", {"model": "mock/echo"}))
    assert response.status == 404
