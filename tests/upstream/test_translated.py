"""The litellm translation provider against real servers that speak other wire formats.

llm-katan (echo backend: no model) serves Anthropic's, Gemini's and Bedrock's native APIs on one port, so the
translation is exercised on real sockets in both directions. Failures llm-katan cannot produce on demand (a
Retry-After header, a stream that dies half-way, a stall) come from a small fake Anthropic server whose behaviour
is chosen by the model name, as the mock provider's is.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.exceptions import TollgateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.routing import Deployment
from gateway.upstream.base import BufferedResponse, UpstreamCall
from gateway.upstream.translated import READONLY_WARNING, TranslatedProvider, map_litellm_exceptions
from support.katan import Katan, start_katan
from support.threads import free_port

# pytest resets warning filters for each test, dropping the one the provider installs for this pydantic warning.
pytestmark = pytest.mark.filterwarnings(f"ignore:{READONLY_WARNING}:UserWarning")

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Hello there"}]


# --- llm-katan ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def katan() -> Iterator[Katan]:
    with start_katan() as server:
        yield server


# --- a fake Anthropic for the failures ---------------------------------------------------------------------------


def _anthropic_event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


MESSAGE_START = _anthropic_event(
    "message_start",
    {
        "message": {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "drop-midstream",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 2, "output_tokens": 0},
        }
    },
)
BLOCK_START = _anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = _anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}})


class FakeAnthropic:
    """POST /v1/messages; the model name picks the behaviour:

    error-429         429 rate_limit_error with Retry-After: 7
    error-529         529 overloaded_error (Anthropic's "overloaded" status)
    drop-midstream    a 200 stream: one text delta, then the connection is cut
    drop-at-start     a 200 stream whose connection is cut before any event
    stall             never answers (until the test ends)
    """

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        model = (await request.json())["model"]
        if model == "error-429":
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}
            return web.json_response(error, status=429, headers={"retry-after": "7"})
        if model == "error-529":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded."}}
            return web.json_response(error, status=529)
        if model == "stall":
            await self.release.wait()
            return web.json_response({}, status=500)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if model == "drop-midstream":
            await response.write(MESSAGE_START + BLOCK_START + DELTA)
        assert request.transport is not None
        request.transport.abort()
        return response


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[tuple[str, FakeAnthropic]]:
    fake = FakeAnthropic()
    app = web.Application()
    app.router.add_post("/v1/messages", fake.messages)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", fake
    finally:
        fake.release.set()
        await runner.cleanup()


# --- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture
async def anthropic() -> AsyncIterator[TranslatedProvider]:
    provider = TranslatedProvider("anthropic")
    yield provider
    await provider.aclose()


def make_call(
    deployment: Deployment, body: dict[str, Any], *, endpoint: str = "chat/completions", stream: bool = False
) -> UpstreamCall:
    body = {**body, "model": deployment.model}
    if stream:
        body["stream"] = True
    return UpstreamCall(deployment, endpoint, body, orjson.dumps(body), stream)


def chat(deployment: Deployment, *, stream: bool = False, **fields: Any) -> UpstreamCall:
    return make_call(deployment, {"messages": MESSAGES, "max_tokens": 64, **fields}, stream=stream)


async def sse_events(response: BufferedResponse) -> list[bytes]:
    """The `data:` payloads of a stream, in order; asserts every event is framed as OpenAI frames them."""
    raw = b"".join([chunk async for chunk in response.iter_chunks()])
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(event.startswith(b"data: ") for event in events), raw
    return [event.removeprefix(b"data: ") for event in events]


def streamed_text(events: list[bytes]) -> str:
    text = []
    for event in events:
        chunk = orjson.loads(event)
        assert chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
    return "".join(text)


def assert_completion(body: dict[str, Any], model: str) -> None:
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert "Hello there" in choice["message"]["content"]  # the echo backend repeats the user's message
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def assert_usage_stream(response: BufferedResponse) -> None:
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = await sse_events(response)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert "Hello there" in streamed_text(events[:-1])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0].get("finish_reason")] == ["stop"]
    usage = chunks[-1]["usage"]  # include_usage: the last chunk carries it
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert all("usage" not in chunk for chunk in chunks[:-1])


# --- llm-katan: the formats, for real ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_anthropic_chat_is_translated_to_an_openai_completion(
    katan: Katan, anthropic: TranslatedProvider
) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_base=katan.url, api_key="test-key")

    response = await anthropic.send(chat(deployment))

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert_completion(orjson.loads(await response.read()), "claude-test")


@pytest.mark.slow
async def test_anthropic_stream_is_openai_sse_with_usage_and_done(katan: Katan, anthropic: TranslatedProvider) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_base=katan.url, api_key="test-key")

    response = await anthropic.send(chat(deployment, stream=True, stream_options={"include_usage": True}))

    await assert_usage_stream(response)


@pytest.mark.slow
async def test_anthropic_stream_without_include_usage_has_no_usage(katan: Katan, anthropic: TranslatedProvider) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_base=katan.url, api_key="test-key")

    events = await sse_events(await anthropic.send(chat(deployment, stream=True)))

    assert events[-1] == b"[DONE]"
    assert not any("usage" in orjson.loads(event) for event in events[:-1])


@pytest.mark.slow
async def test_anthropic_base_may_end_in_v1_like_an_openai_base(katan: Katan, anthropic: TranslatedProvider) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_base=katan.url + "/v1/", api_key="test-key")

    response = await anthropic.send(chat(deployment))

    assert response.status == 200, await response.read()


@pytest.mark.slow
async def test_anthropic_text_completion(katan: Katan, anthropic: TranslatedProvider) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_base=katan.url, api_key="test-key")

    response = await anthropic.send(
        make_call(deployment, {"prompt": "Hello there", "max_tokens": 64}, endpoint="completions")
    )

    body = orjson.loads(await response.read())
    assert body["object"] == "text_completion"
    assert "Hello there" in body["choices"][0]["text"]
    assert body["usage"]["total_tokens"] > 0


@pytest.fixture
async def gemini() -> AsyncIterator[TranslatedProvider]:
    provider = TranslatedProvider("gemini")
    yield provider
    await provider.aclose()


def gemini_deployment(katan: Katan) -> Deployment:
    # litellm sends the Gemini key as `x-goog-api-key`, which llm-katan does not read (it wants Authorization or
    # ?key=): the deployment's extra headers carry it, which also proves they reach the upstream.
    return Deployment(
        "gemini",
        "gemini",
        "gemini-test",
        api_base=katan.url + "/v1beta",
        api_key="test-key",
        headers={"authorization": "Bearer test-key"},
    )


@pytest.mark.slow
async def test_gemini_chat_is_translated_to_an_openai_completion(katan: Katan, gemini: TranslatedProvider) -> None:
    response = await gemini.send(chat(gemini_deployment(katan)))

    assert response.status == 200, await response.read()
    # litellm reports Gemini's `modelVersion`, which llm-katan sets to the model it serves.
    assert_completion(orjson.loads(await response.read()), "echo-model")


@pytest.mark.slow
async def test_gemini_stream_is_openai_sse_with_usage_and_done(katan: Katan, gemini: TranslatedProvider) -> None:
    response = await gemini.send(chat(gemini_deployment(katan), stream=True, stream_options={"include_usage": True}))

    await assert_usage_stream(response)


@pytest.mark.slow
async def test_bedrock_converse_is_translated_to_an_openai_completion(katan: Katan) -> None:
    # The api key goes out as a Bedrock API key (Authorization: Bearer), so no AWS credentials are needed.
    # Not streamed: llm-katan answers converse-stream with text SSE where Bedrock sends binary event-stream frames.
    provider = TranslatedProvider("bedrock")
    deployment = Deployment("nova", "bedrock", "amazon.nova-lite-v1:0", api_base=katan.url, api_key="test-key")
    try:
        response = await provider.send(chat(deployment))
    finally:
        await provider.aclose()

    assert response.status == 200, await response.read()
    assert_completion(orjson.loads(await response.read()), "amazon.nova-lite-v1:0")


# --- failures ----------------------------------------------------------------------------------------------------


async def test_rate_limit_is_a_429_response_with_retry_after(
    fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider
) -> None:
    url, fake = fake_anthropic
    deployment = Deployment("claude", "anthropic", "error-429", api_base=url, api_key="k")

    response = await anthropic.send(chat(deployment))

    assert response.status == 429
    assert response.headers["retry-after"] == "7"
    error = orjson.loads(await response.read())["error"]
    assert error["message"] == "Slow down."
    assert error["type"] == "rate_limit_error"
    assert fake.calls == 1  # litellm does not retry behind the proxy's back


async def test_upstream_5xx_is_relayed_as_a_response(
    fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider
) -> None:
    url, fake = fake_anthropic
    deployment = Deployment("claude", "anthropic", "error-529", api_base=url, api_key="k")

    response = await anthropic.send(chat(deployment, stream=True))

    assert response.status == 500  # litellm reports Anthropic's 529 "overloaded" as a 500
    error = orjson.loads(await response.read())["error"]
    assert error == {"message": "Overloaded.", "type": "api_error", "param": None, "code": None}
    assert fake.calls == 1


async def test_stream_dropped_midway_ends_with_an_error_event(
    fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider
) -> None:
    url, _ = fake_anthropic
    deployment = Deployment("claude", "anthropic", "drop-midstream", api_base=url, api_key="k")

    response = await anthropic.send(chat(deployment, stream=True))

    assert response.status == 200
    events = await sse_events(response)
    assert streamed_text(events[:-1]) == "Hello"
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["message"] == "The upstream of deployment 'claude' closed the connection early."
    assert b"[DONE]" not in events


async def test_stream_dropped_before_its_first_event_raises_so_the_proxy_can_fall_back(
    fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider
) -> None:
    url, _ = fake_anthropic
    deployment = Deployment("claude", "anthropic", "drop-at-start", api_base=url, api_key="k")

    with pytest.raises(UpstreamUnavailable):
        await anthropic.send(chat(deployment, stream=True))


@pytest.mark.parametrize("stream", [False, True])
async def test_stalled_upstream_raises_upstream_timeout(
    fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider, stream: bool
) -> None:
    url, _ = fake_anthropic
    deployment = Deployment("claude", "anthropic", "stall", api_base=url, api_key="k", timeout=0.3)

    with pytest.raises(UpstreamTimeout):
        await anthropic.send(chat(deployment, stream=stream))


@pytest.mark.parametrize(("kind", "base"), [("anthropic", ""), ("gemini", "/v1beta")])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_down_raises_upstream_unavailable(kind: str, base: str, stream: bool) -> None:
    # litellm reports a refused connection as a 500 InternalServerError for Anthropic and an APIConnectionError
    # for Gemini: both must read as "unreachable", not as an answer.
    provider = TranslatedProvider(kind)
    deployment = Deployment("down", kind, "some-model", api_base=f"http://127.0.0.1:{free_port()}{base}", api_key="k")
    try:
        with pytest.raises(UpstreamUnavailable):
            await provider.send(chat(deployment, stream=stream))
    finally:
        await provider.aclose()


def litellm_error(case: str) -> Exception:
    """litellm's exceptions as its providers raise them (built on demand: importing litellm takes seconds)."""
    import litellm.exceptions as errors

    broken = errors.APIConnectionError(
        "Checksum mismatch: expected 0x6d\nTraceback (most recent call last):\n  File ...", "bedrock", "m"
    )
    anthropic_429 = """AnthropicException - b'{"type": "error", "error": {"message": "Slow down."}}'"""
    cases: dict[str, Exception] = {
        "timeout": errors.Timeout("Connection timed out.", model="m", llm_provider="anthropic"),
        "broken translation": broken,
        "stream failed": errors.MidStreamFallbackError("failed", "m", "bedrock", original_exception=broken),
        "rate limit": errors.RateLimitError(anthropic_429, "anthropic", "m", headers={"Retry-After": "3"}),
        "bad request": errors.BadRequestError('GeminiException - {"error": {"message": "Bad."}}', "m", "gemini"),
    }
    return cases[case]


BROKEN = "The upstream of deployment 'd' failed: Checksum mismatch: expected 0x6d"


@pytest.mark.parametrize(
    ("case", "kind", "status", "message"),
    [
        ("timeout", UpstreamTimeout, 504, "The upstream of deployment 'd' timed out."),
        # No traceback, no litellm prefixes: the message reaches the client.
        ("broken translation", UpstreamUnavailable, 502, BROKEN),
        ("stream failed", UpstreamUnavailable, 502, BROKEN),
        ("rate limit", UpstreamError, 429, "Slow down."),
        ("bad request", UpstreamError, 400, "Bad."),
    ],
)
def test_litellm_errors_are_translated_in_one_place(
    case: str, kind: type[TollgateError], status: int, message: str
) -> None:
    with pytest.raises(kind) as raised, map_litellm_exceptions("d"):
        raise litellm_error(case)

    assert (raised.value.status, raised.value.message) == (status, message)
    assert raised.value.headers == ({"retry-after": "3"} if status == 429 else {})


def test_errors_litellm_did_not_make_are_left_alone() -> None:
    with pytest.raises(KeyError), map_litellm_exceptions("d"):
        raise KeyError("a bug")


# --- what is not forwarded ---------------------------------------------------------------------------------------


async def test_unsupported_endpoint_is_a_400(anthropic: TranslatedProvider) -> None:
    deployment = Deployment("claude", "anthropic", "claude-test", api_key="k")

    response = await anthropic.send(make_call(deployment, {"input": "hi"}, endpoint="responses"))

    assert response.status == 400
    error = orjson.loads(await response.read())["error"]
    assert error["type"] == "invalid_request_error"
    assert "responses" in error["message"]
    assert "anthropic" in error["message"]


@pytest.mark.parametrize("field", ["base_url", "api_base", "api_key", "mock_response", "metadata", "aws_region_name"])
async def test_fields_that_steer_litellm_are_refused(
    field: str, fake_anthropic: tuple[str, FakeAnthropic], anthropic: TranslatedProvider
) -> None:
    # Without an api_base of its own the deployment would follow a client's `base_url`, key and all.
    url, fake = fake_anthropic
    deployment = Deployment("claude", "anthropic", "claude-test", api_key="secret")

    response = await anthropic.send(make_call(deployment, {"messages": MESSAGES, field: url}))

    assert response.status == 400
    assert orjson.loads(await response.read())["error"]["param"] == field
    assert fake.calls == 0


def test_importing_the_module_does_not_import_litellm() -> None:
    code = (
        "import sys, gateway.upstream.translated\n"
        "print(sorted(m for m in ('litellm', 'openai', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
