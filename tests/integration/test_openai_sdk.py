"""The official OpenAI SDK, unmodified, against a real gateway in front of a fake OpenAI server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from support.fake_openai import FakeOpenAI, Reply, chat_stream_events
from support.gateway import RunningGateway, run_gateway

POLICY = """
models:
  - alias: gpt-test
    deployments:
      - name: fake
        provider: openai
        model: upstream-model
        api_base: {base}
        api_key_env: FAKE_PROVIDER_KEY
        retries: 0
  - alias: "mock/*"
    deployments: [{{provider: mock}}]
  - alias: restricted-model
    deployments: [{{provider: mock, model: mock/echo}}]
teams:
  limited:
    models: ["gpt-*"]
"""
PROVIDER_KEY = "sk-provider-secret-123"


@pytest.fixture
def gateway(fake_openai: FakeOpenAI) -> Iterator[RunningGateway]:
    with run_gateway(POLICY.format(base=fake_openai.base_url), env={"FAKE_PROVIDER_KEY": PROVIDER_KEY}) as gw:
        yield gw


@pytest.fixture
def key(gateway: RunningGateway) -> str:
    return gateway.create_key("research")


@pytest.fixture
def client(gateway: RunningGateway, key: str) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


MESSAGES = [{"role": "user", "content": "what is the capital of France"}]


def test_chat_completion_reaches_upstream_with_its_model_and_provider_key(
    client: OpenAI, fake_openai: FakeOpenAI, key: str
) -> None:
    completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]

    assert completion.choices[0].message.content == "what is the capital of France"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    [call] = fake_openai.calls()
    assert call.json["model"] == "upstream-model"
    assert call.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert key not in str(call.headers) and key not in str(call.json)


def test_response_carries_a_request_id(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")


def test_streamed_chat_relays_every_event_in_order_and_done_last(
    gateway: RunningGateway, key: str, fake_openai: FakeOpenAI
) -> None:
    events = chat_stream_events("upstream-model", "one two three four five", include_usage=False)
    fake_openai.enqueue(Reply(events=events, event_gap=0.01))
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = b"".join(response.iter_bytes())
    assert body == b"".join(events)
    assert body.endswith(b"data: [DONE]\n\n")


def test_streamed_chat_through_the_sdk_yields_the_text(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "what is the capital of France"


def test_stream_options_reach_upstream_and_usage_chunk_comes_back(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert fake_openai.calls()[0].json["stream_options"] == {"include_usage": True}


def test_tool_calls_pass_through_both_ways(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    fake_openai.enqueue(
        Reply(
            body={
                "id": "chatcmpl-tools",
                "object": "chat.completion",
                "created": 1,
                "model": "upstream-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
            }
        )
    )
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert calls[0].function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    sent = fake_openai.calls()[0].json
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"


def test_n_returns_several_choices(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES, n=2)  # type: ignore[arg-type]
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert fake_openai.calls()[0].json["n"] == 2


def test_unknown_fields_pass_through_and_the_tollgate_field_is_stripped(
    client: OpenAI, fake_openai: FakeOpenAI
) -> None:
    client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        extra_body={"vendor_knob": {"depth": 3}, "tollgate": {"tags": {"feature": "search"}}},
    )
    sent = fake_openai.calls()[0].json
    assert sent["vendor_knob"] == {"depth": 3}
    assert sent["response_format"] == {"type": "json_object"}
    assert "tollgate" not in sent


def test_embeddings(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai_embedding = client.embeddings.create(model="gpt-test", input=["a", "b"], encoding_format="float")
    assert [item.embedding for item in fake_openai_embedding.data] == [[0.1, 0.2, 0.3]] * 2
    assert fake_openai.calls("/v1/embeddings")[0].json["input"] == ["a", "b"]


def test_completions_and_responses_endpoints_are_proxied(
    gateway: RunningGateway, key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(
        Reply(body={"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": []}),
        Reply(body={"id": "resp_1", "object": "response", "status": "completed", "output": []}),
    )
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    completion = client.completions.create(model="gpt-test", prompt="Say hi")
    assert completion.id == "cmpl-1"
    response = client.responses.create(model="gpt-test", input="Say hi")
    assert response.id == "resp_1"
    assert fake_openai.calls("/v1/completions")[0].json["prompt"] == "Say hi"
    assert fake_openai.calls("/v1/responses")[0].json["model"] == "upstream-model"


def test_models_lists_the_aliases_the_key_may_use(gateway: RunningGateway) -> None:
    everything = OpenAI(base_url=gateway.base_url, api_key=gateway.create_key("research"), max_retries=0)
    limited = OpenAI(base_url=gateway.base_url, api_key=gateway.create_key("limited"), max_retries=0)
    assert [m.id for m in everything.models.list()] == ["gpt-test", "mock/*", "restricted-model"]
    assert [m.id for m in limited.models.list()] == ["gpt-test"]
    assert limited.models.retrieve("gpt-test").id == "gpt-test"
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("restricted-model")


# -- errors, each raising the SDK's own exception class ---------------------------------------------------------


def test_missing_and_wrong_keys_are_401(gateway: RunningGateway) -> None:
    missing = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as caught:
        OpenAI(base_url=gateway.base_url, api_key="tg-not-a-real-key", max_retries=0).chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert caught.value.status_code == 401
    assert "tg-not-a-real-key" not in caught.value.message


def test_revoked_key_is_401_at_once(gateway: RunningGateway) -> None:
    key = gateway.create_key("research")
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]
    [record] = [k for k in gateway.admin("GET", "/admin/keys").json()["data"] if key.startswith(k["display"][:-1])]
    assert gateway.admin("DELETE", f"/admin/keys/{record['id']}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]


def test_model_outside_the_team_policy_is_403(gateway: RunningGateway) -> None:
    client = OpenAI(base_url=gateway.base_url, api_key=gateway.create_key("limited"), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="restricted-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_allowed"


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_invalid_field_is_400_naming_the_field(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=[])
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, n=0)  # type: ignore[arg-type]
    assert caught.value.param == "n"
    assert fake_openai.requests == []


def test_malformed_json_is_400_in_openai_shape(gateway: RunningGateway, key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=b'{"model": "gpt-test", "messages": [',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "not valid JSON" in error["message"]


def test_body_over_the_limit_is_413(fake_openai: FakeOpenAI) -> None:
    with run_gateway(POLICY.format(base=fake_openai.base_url), max_body_bytes=1000) as gw:
        key = gw.create_key("research")
        big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx.post(f"{gw.base_url}/chat/completions", json=big, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:
            body = orjson.dumps(big)
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        response = httpx.post(
            f"{gw.base_url}/chat/completions", content=chunked(), headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 413
    assert fake_openai.requests == []


def test_upstream_client_error_is_passed_through_with_its_message(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    message = "This model's maximum context length is 8192 tokens."
    fake_openai.enqueue(
        Reply(
            status=400,
            body={"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": None}},
        )
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.body == {
        "message": message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    assert len(fake_openai.calls()) == 1


def test_upstream_error_that_is_not_json_is_wrapped_in_openai_shape(client: OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(status=404, body=b"<html>no such route</html>"))
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert isinstance(caught.value.body, dict)
    assert "no such route" in caught.value.body["message"]


def test_wrong_method_and_unknown_path(gateway: RunningGateway, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{gateway.base_url}/chat/completions", headers=headers).status_code == 405
    response = httpx.get(f"{gateway.base_url}/nope", headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_health_and_readiness_need_no_key(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


def test_admin_endpoints_need_the_admin_key(gateway: RunningGateway, key: str) -> None:
    response = httpx.get(f"{gateway.url}/admin/keys", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    created = gateway.admin("POST", "/admin/keys", json={"team": "ops", "budget_usd": "12.50"})
    assert created.status_code == 201
    assert created.json()["budget_usd"] == "12.50"
    listed = gateway.admin("GET", "/admin/keys", params={"team": "ops"}).json()["data"]
    assert [k["id"] for k in listed] == [created.json()["id"]]
    assert "key" not in listed[0]
    bad = gateway.admin("POST", "/admin/keys", json={"team": "ops", "budget_usd": "lots"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_usd"
    assert gateway.admin("DELETE", "/admin/keys/key_missing").status_code == 404
