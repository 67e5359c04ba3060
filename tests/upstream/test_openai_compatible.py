"""The OpenAI-compatible passthrough against a fake server on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.exceptions import UpstreamTimeout, UpstreamUnavailable
from gateway.routing import Deployment
from gateway.upstream.base import UpstreamCall
from gateway.upstream.openai_compatible import OpenAICompatibleProvider, new_session
from support.fake_openai import FakeOpenAI, Reply
from support.threads import free_port

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    session = new_session()
    yield session
    await session.close()


def call(deployment: Deployment, body: dict[str, Any] = BODY, stream: bool = False) -> UpstreamCall:
    return UpstreamCall(deployment, "chat/completions", body, orjson.dumps(body), stream, {"x-request-id": "req_1"})


async def test_sends_the_exact_bytes_with_the_deployment_key_and_headers(session: Any, fake_openai: FakeOpenAI) -> None:
    deployment = Deployment(
        name="d",
        provider="openai",
        model="gpt-4o-mini",
        api_base=fake_openai.base_url,
        api_key="sk-up",
        headers={"OpenAI-Organization": "org-1"},
    )
    response = await OpenAICompatibleProvider(session).send(call(deployment))
    assert response.status == 200
    assert orjson.loads(await response.read())["object"] == "chat.completion"
    [recorded] = fake_openai.requests
    assert recorded.path == "/v1/chat/completions"
    assert recorded.json == BODY
    assert recorded.headers["authorization"] == "Bearer sk-up"
    assert recorded.headers["openai-organization"] == "org-1"
    assert recorded.headers["x-request-id"] == "req_1"


async def test_azure_uses_its_deployment_url_api_version_and_api_key_header(
    session: Any, fake_openai: FakeOpenAI
) -> None:
    root = fake_openai.base_url.removesuffix("/v1")
    deployment = Deployment(
        name="az", provider="azure", model="my-gpt4o", api_base=root, api_key="azure-secret", api_version="2024-10-21"
    )
    body = {**BODY, "model": "my-gpt4o"}
    response = await OpenAICompatibleProvider(session, "azure.ai.openai", azure=True).send(call(deployment, body))
    assert response.status == 200
    [recorded] = fake_openai.requests
    assert recorded.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert recorded.query == {"api-version": "2024-10-21"}
    assert recorded.headers["api-key"] == "azure-secret"
    assert "authorization" not in recorded.headers


async def test_error_status_is_a_response_not_an_exception(session: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(status=503, body={"error": {"message": "busy", "type": "server_error"}}))
    deployment = Deployment(name="d", provider="openai", model="m", api_base=fake_openai.base_url)
    response = await OpenAICompatibleProvider(session).send(call(deployment))
    assert response.status == 503
    assert orjson.loads(await response.read())["error"]["message"] == "busy"


async def test_refused_connection_raises_upstream_unavailable(session: Any) -> None:
    deployment = Deployment(name="d", provider="openai", model="m", api_base=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamUnavailable):
        await OpenAICompatibleProvider(session).send(call(deployment))


async def test_slow_answer_raises_upstream_timeout(session: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(delay=2))
    deployment = Deployment(name="d", provider="openai", model="m", api_base=fake_openai.base_url, timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        response = await OpenAICompatibleProvider(session).send(call(deployment))
        await response.read()


async def test_stream_gap_longer_than_the_timeout_raises_upstream_timeout(
    session: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(Reply(events=[b"data: {}\n\n", b"data: {}\n\n", b"data: [DONE]\n\n"], event_gap=0.5))
    deployment = Deployment(name="d", provider="openai", model="m", api_base=fake_openai.base_url, timeout=0.2)
    response = await OpenAICompatibleProvider(session).send(call(deployment, {**BODY, "stream": True}, stream=True))
    with pytest.raises(UpstreamTimeout):
        async for _ in response.iter_chunks():
            pass
