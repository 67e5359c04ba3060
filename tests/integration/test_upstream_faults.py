"""Upstream faults: timeouts, retries, Retry-After, fallback, streams that break, clients that leave."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI

from support.fake_openai import FakeOpenAI, Reply, chat_stream_events
from support.gateway import RunningGateway, run_gateway
from support.threads import free_port

MESSAGES = [{"role": "user", "content": "hello there"}]


def policy(*deployments: str, retries: int = 2, timeout: float = 5.0) -> str:
    lines = "\n".join(f"      - {d}" for d in deployments)
    return f"""
defaults: {{timeout: {timeout}, retries: {retries}}}
models:
  - alias: gpt-test
    deployments:
{lines}
"""


def openai_deployment(name: str, base_url: str, weight: float = 1) -> str:
    return f"{{name: {name}, provider: openai, api_base: '{base_url}', weight: {weight}}}"


def sdk(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key=gateway.create_key("t"), max_retries=0, timeout=30)


def test_upstream_timeout_is_504(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(delay=3.0))
    with run_gateway(policy(openai_deployment("slow", fake_openai.base_url), retries=0, timeout=0.3)) as gw:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.status_code == 504
        assert caught.value.code == "upstream_timeout"
        assert time.monotonic() - started < 2.5


def test_unreachable_upstream_is_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with run_gateway(policy(openai_deployment("dead", dead), retries=1)) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_unreachable"


def test_server_error_then_success_is_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}}))
    with run_gateway(policy(openai_deployment("flaky", fake_openai.base_url))) as gw:
        completion = sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "hello there"
    assert len(fake_openai.calls()) == 2


def test_429_waits_for_retry_after_then_succeeds(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(
        Reply(status=429, body={"error": {"message": "slow down", "type": "rate_limit"}}, headers={"Retry-After": "1"})
    )
    with run_gateway(policy(openai_deployment("limited", fake_openai.base_url))) as gw:
        client = sdk(gw)
        started = time.monotonic()
        completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
    assert completion.choices[0].message.content == "hello there"
    assert len(fake_openai.calls()) == 2
    assert elapsed >= 1.0


def test_429_with_a_long_retry_after_goes_back_to_the_client_at_once(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(
        Reply(status=429, body={"error": {"message": "quota", "type": "rate_limit"}}, headers={"Retry-After": "120"})
    )
    with run_gateway(policy(openai_deployment("limited", fake_openai.base_url))) as gw:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        assert time.monotonic() - started < 2
    assert caught.value.response.headers["retry-after"] == "120"
    assert caught.value.message.endswith("'message': 'quota', 'type': 'rate_limit'}}")
    assert len(fake_openai.calls()) == 1


def test_retries_give_up_after_the_configured_count(fake_openai: FakeOpenAI) -> None:
    failing = Reply(status=503, body={"error": {"message": "overloaded", "type": "server_error"}})
    fake_openai.enqueue(failing, failing, failing, failing)
    with run_gateway(policy(openai_deployment("down", fake_openai.base_url), retries=2)) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == 503
    assert len(fake_openai.calls()) == 3


def test_connection_refused_falls_back_to_the_next_deployment(fake_openai: FakeOpenAI) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    deployments = (openai_deployment("primary", dead, weight=1), openai_deployment("backup", fake_openai.base_url, 0))
    with run_gateway(policy(*deployments)) as gw:
        completion = sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "hello there"
    assert len(fake_openai.calls()) == 1


def test_server_errors_fall_back_after_retries(fake_openai: FakeOpenAI) -> None:
    with FakeOpenAI.running() as backup:
        fake_openai.enqueue(*[Reply(status=500, body={"error": {"message": "x", "type": "server_error"}})] * 2)
        deployments = (
            openai_deployment("primary", fake_openai.base_url, weight=1),
            openai_deployment("backup", backup.base_url, weight=0),
        )
        with run_gateway(policy(*deployments, retries=1)) as gw:
            completion = sdk(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "hello there"
        assert len(fake_openai.calls()) == 2
        assert len(backup.calls()) == 1


def test_stream_that_drops_midway_ends_with_an_error_event_and_no_fallback(fake_openai: FakeOpenAI) -> None:
    with FakeOpenAI.running() as backup:
        events = chat_stream_events("m", "a b c d e f g h", include_usage=False)
        fake_openai.enqueue(Reply(events=events, drop_after=4))
        deployments = (
            openai_deployment("primary", fake_openai.base_url, weight=1),
            openai_deployment("backup", backup.base_url, weight=0),
        )
        with run_gateway(policy(*deployments)) as gw:
            client = sdk(gw)
            received: list[str] = []
            stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            with pytest.raises(openai.APIError) as caught:
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content or "")
            assert "ended the response early" in caught.value.message
            assert "".join(received) == "a b c"
            # The gateway is still healthy and serves the next call.
            completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
            assert completion.choices[0].message.content == "hello there"
            assert httpx.get(f"{gw.url}/healthz").status_code == 200
        assert backup.calls() == []


def test_client_disconnect_midstream_cancels_the_upstream_call(fake_openai: FakeOpenAI) -> None:
    events = chat_stream_events("m", " ".join(["word"] * 200), include_usage=False)
    fake_openai.enqueue(Reply(events=events, event_gap=0.02))
    with run_gateway(policy(openai_deployment("slow-stream", fake_openai.base_url))) as gw:
        key = gw.create_key("t")
        with httpx.stream(
            "POST",
            f"{gw.base_url}/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            iterator = response.iter_raw()
            next(iterator)
            next(iterator)
        # The client is gone; the upstream stream must be aborted long before its 4 s of events are sent.
        assert fake_openai.wait_for(lambda: fake_openai.streams_cancelled == 1, timeout=3.0)
        assert fake_openai.streams_completed == 0
        assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_mock_drop_midstream_reaches_the_sdk_as_an_error() -> None:
    with run_gateway("models: [{alias: 'mock/*', deployments: [{provider: mock}]}]") as gw:
        client = sdk(gw)
        stream = client.chat.completions.create(
            model="mock/drop-midstream",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="mock/error-429", messages=MESSAGES)  # type: ignore[arg-type]
