"""Traces of the gateway as a real process (`tollgate serve`), exported over OTLP/HTTP and OTLP/gRPC to a real OTLP
receiver, in front of the fake OpenAI upstream: span tree, retries and fallbacks, GenAI semantic-convention
attributes, W3C trace context in and out, no secrets and no content by default, upstream failures."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.telemetry import attributes as attr
from support.fake_openai import FakeOpenAI, Recorded, Reply
from support.gateway import RunningGateway, gateway_process
from support.otlp_receiver import AttributeValue, OtlpReceiver, Span
from support.threads import free_port

UPSTREAM_MODEL = "gpt-4o-mini"  # priced in litellm's bundled map, so spans carry a cost
TEAM = "tracing-team"
CHAT_PATH = "/v1/chat/completions"
SERVER_SPAN = f"POST {CHAT_PATH}"
CLIENT_SPAN = f"chat {UPSTREAM_MODEL}"
SERVER_ERROR = Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}})

# Every attribute name the gateway may emit: the string constants of gateway/telemetry/attributes.py.
KNOWN_NAMES = frozenset(v for k, v in vars(attr).items() if k.isupper() and isinstance(v, str))
CONTENT_NAMES = (attr.GEN_AI_INPUT_MESSAGES, attr.GEN_AI_OUTPUT_MESSAGES, attr.GEN_AI_SYSTEM_INSTRUCTIONS)


def policy(upstream: str, dead: str) -> str:
    fake = f"provider: openai, api_base: '{upstream}', model: {UPSTREAM_MODEL}"
    gone = f"provider: openai, api_base: '{dead}', model: {UPSTREAM_MODEL}"
    return f"""
defaults: {{timeout: 10, retries: 1}}
models:
  - alias: gpt-test
    deployments:
      - {{name: fake, {fake}}}
  - alias: gpt-fallback
    deployments:
      - {{name: dead-primary, {gone}, weight: 1}}
      - {{name: fake-backup, {fake}, weight: 0}}
  - alias: gpt-slow
    deployments:
      - {{name: fake-slow, {fake}, timeout: 0.3, retries: 0}}
  - alias: gpt-dead
    deployments:
      - {{name: dead, {gone}, retries: 0}}
"""


@dataclass
class Stack:
    fake: FakeOpenAI
    otlp: OtlpReceiver
    gateway: RunningGateway
    key: str
    transport: str

    def chat(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        payload = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello there"}], **body}
        response = httpx.post(
            self.gateway.url + CHAT_PATH,
            json=payload,
            headers={"Authorization": f"Bearer {self.key}", **(headers or {})},
            timeout=30,
        )
        return response

    def trace(self, trace_id: str) -> tuple[Span, list[Span]]:
        """The call's SERVER span and its CLIENT spans in attempt order, once the SERVER span (which ends last, so
        is exported last) has arrived."""
        self.otlp.wait_for(lambda spans: any(s.trace_id == trace_id and s.kind == "SERVER" for s in spans))
        spans = self.otlp.trace(trace_id)
        [server] = [s for s in spans if s.kind == "SERVER"]
        clients = sorted((s for s in spans if s.kind == "CLIENT"), key=attempt_number)
        assert len(spans) == 1 + len(clients), f"unexpected spans in the trace: {spans}"
        return server, clients

    def upstream_requests(self, trace_id: str) -> list[Recorded]:
        return [r for r in self.fake.calls() if r.headers.get("traceparent", "").split("-")[1:2] == [trace_id]]


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"], ids=["otlp-http", "otlp-grpc"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    protocol: str = request.param
    data = tmp_path_factory.mktemp("tracing")
    with FakeOpenAI.running() as fake, OtlpReceiver.running() as otlp:
        policy_path = data / "policy.yaml"
        policy_path.write_text(policy(fake.base_url, f"http://127.0.0.1:{free_port()}/v1"))
        endpoint = otlp.http_endpoint if protocol == "http/protobuf" else otlp.grpc_endpoint
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": "tollgate-under-test",
        }
        with gateway_process(Path(policy_path), data, env) as process:
            key = process.gateway.create_key(TEAM)
            yield Stack(fake, otlp, process.gateway, key, "http" if protocol == "http/protobuf" else "grpc")


def attempt_number(span: Span) -> int:
    number = span.attributes[attr.TOLLGATE_ATTEMPT]
    assert isinstance(number, int), span
    return number


def trace_id_of(response: httpx.Response) -> str:
    trace_id = response.headers["x-tollgate-trace-id"]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    return trace_id


def strings_in(value: AttributeValue) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from strings_in(item)


def everything_said(span: Span) -> list[str]:
    """Every string a backend would show for the span: name, status, attribute names and values, events, resource."""
    said = [span.name, span.status_message, span.trace_state]
    for attributes in [span.attributes, span.resource, *(event.attributes for event in span.events)]:
        said.extend(strings_in(dict(attributes)))
    said.extend(event.name for event in span.events)
    return said


# -- the span tree ------------------------------------------------------------------------------------------------


def test_each_call_is_one_trace_with_the_client_span_under_the_server_span(stack: Stack) -> None:
    responses = [stack.chat() for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    trace_ids = [trace_id_of(r) for r in responses]
    assert len(set(trace_ids)) == 3
    for trace_id in trace_ids:
        server, [client] = stack.trace(trace_id)
        assert (server.name, server.kind, server.parent_span_id) == (SERVER_SPAN, "SERVER", None)
        assert (client.name, client.kind, client.parent_span_id) == (CLIENT_SPAN, "CLIENT", server.span_id)
        assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
        assert (server.status_code, client.status_code) == ("UNSET", "UNSET")
        assert server.resource["service.name"] == "tollgate-under-test"
        assert {server.transport, client.transport} == {stack.transport}
        assert server.scope == client.scope == "tollgate"


def test_chat_spans_carry_the_genai_conventions(stack: Stack) -> None:
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "total_tokens": 160,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 16},
    }
    answer = {
        "id": "chatcmpl-conventions-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "length"},
            {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "stop"},
        ],
        "usage": usage,
    }
    stack.fake.enqueue(Reply(body=answer))
    response = stack.chat(max_tokens=64, temperature=0.25, top_p=0.5, n=2)
    assert response.status_code == 200
    server, [client] = stack.trace(trace_id_of(response))
    a = client.attributes
    assert a[attr.GEN_AI_OPERATION_NAME] == "chat"
    assert a[attr.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[attr.GEN_AI_REQUEST_MODEL] == UPSTREAM_MODEL
    assert a[attr.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[attr.GEN_AI_RESPONSE_ID] == "chatcmpl-conventions-1"
    assert a[attr.GEN_AI_RESPONSE_FINISH_REASONS] == ["length", "stop"]
    assert a[attr.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert a[attr.GEN_AI_REQUEST_TEMPERATURE] == 0.25
    assert a[attr.GEN_AI_REQUEST_TOP_P] == 0.5
    assert a[attr.GEN_AI_REQUEST_CHOICE_COUNT] == 2
    assert a[attr.GEN_AI_REQUEST_STREAM] is False
    assert a[attr.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert a[attr.GEN_AI_USAGE_OUTPUT_TOKENS] == 40
    assert a[attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 64
    assert a[attr.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 16
    assert a[attr.SERVER_ADDRESS] == "127.0.0.1"
    assert a[attr.SERVER_PORT] == stack.fake.port
    assert a[attr.TOLLGATE_DEPLOYMENT] == "fake"
    assert a[attr.TOLLGATE_ATTEMPT] == 1
    assert a[attr.TOLLGATE_USAGE_SOURCE] == "reported"
    assert attr.TOLLGATE_FALLBACK not in a
    assert attr.ERROR_TYPE not in a
    assert attr.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK not in a  # a streaming measure only
    cost = a[attr.TOLLGATE_COST_USD]
    assert isinstance(cost, float) and cost > 0
    # The response header shows the same cost, rounded to six decimals.
    assert abs(float(response.headers["x-tollgate-cost-usd"].lstrip("$")) - cost) <= 5e-7

    s = server.attributes
    assert s[attr.TOLLGATE_TEAM] == TEAM
    key_id = s[attr.TOLLGATE_KEY_ID]
    assert isinstance(key_id, str) and key_id.startswith("key_")
    assert s[attr.TOLLGATE_ALIAS] == "gpt-test"
    assert s[attr.TOLLGATE_COST_USD] == cost
    assert s[attr.HTTP_REQUEST_METHOD] == "POST"
    assert s[attr.HTTP_RESPONSE_STATUS_CODE] == 200
    assert s[attr.URL_PATH] == CHAT_PATH


def test_streamed_call_records_time_to_first_chunk_and_usage(stack: Stack) -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "one two three"}], "stream": True}
    with httpx.stream(
        "POST", stack.gateway.url + CHAT_PATH, json=body, headers={"Authorization": f"Bearer {stack.key}"}, timeout=30
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert text.rstrip().endswith("data: [DONE]")
    server, [client] = stack.trace(trace_id_of(response))
    a = client.attributes
    assert a[attr.GEN_AI_REQUEST_STREAM] is True
    # Only parameters the caller sent are recorded.
    assert not {attr.GEN_AI_REQUEST_MAX_TOKENS, attr.GEN_AI_REQUEST_TEMPERATURE, attr.GEN_AI_REQUEST_TOP_P} & set(a)
    assert a[attr.GEN_AI_RESPONSE_ID] == "chatcmpl-fake"
    assert a[attr.GEN_AI_RESPONSE_MODEL] == UPSTREAM_MODEL
    assert a[attr.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert (a[attr.GEN_AI_USAGE_INPUT_TOKENS], a[attr.GEN_AI_USAGE_OUTPUT_TOKENS]) == (11, 3)
    assert a[attr.TOLLGATE_USAGE_SOURCE] == "reported"
    ttfc = a[attr.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert isinstance(ttfc, float)
    assert 0 < ttfc * 1e9 <= server.duration_ns


# -- retries and fallbacks ------------------------------------------------------------------------------------------


def test_retried_call_shows_two_attempts_the_first_failed(stack: Stack) -> None:
    stack.fake.enqueue(SERVER_ERROR)
    response = stack.chat()
    assert response.status_code == 200
    trace_id = trace_id_of(response)
    server, [first, second] = stack.trace(trace_id)
    assert [c.name for c in (first, second)] == [CLIENT_SPAN, CLIENT_SPAN]
    assert {first.parent_span_id, second.parent_span_id} == {server.span_id}
    assert first.end_ns <= second.start_ns
    assert (first.attributes[attr.TOLLGATE_ATTEMPT], second.attributes[attr.TOLLGATE_ATTEMPT]) == (1, 2)
    assert first.attributes[attr.ERROR_TYPE] == "500"
    assert first.status_code == "ERROR"
    assert attr.GEN_AI_USAGE_INPUT_TOKENS not in first.attributes
    assert attr.ERROR_TYPE not in second.attributes
    assert second.status_code == "UNSET"
    assert second.attributes[attr.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert {c.attributes[attr.TOLLGATE_DEPLOYMENT] for c in (first, second)} == {"fake"}
    assert not any(attr.TOLLGATE_FALLBACK in c.attributes for c in (first, second))
    assert (server.status_code, server.attributes[attr.HTTP_RESPONSE_STATUS_CODE]) == ("UNSET", 200)
    # Each attempt went upstream under its own CLIENT span.
    parents = [r.headers["traceparent"].split("-")[2] for r in stack.upstream_requests(trace_id)]
    assert parents == [first.span_id, second.span_id]


def test_fallback_attempt_is_marked(stack: Stack) -> None:
    response = stack.chat(model="gpt-fallback")
    assert response.status_code == 200
    server, [primary, backup] = stack.trace(trace_id_of(response))
    assert {primary.parent_span_id, backup.parent_span_id} == {server.span_id}
    assert primary.attributes[attr.TOLLGATE_DEPLOYMENT] == "dead-primary"
    assert primary.attributes[attr.ERROR_TYPE] == "UpstreamUnavailable"
    assert primary.status_code == "ERROR"
    assert attr.TOLLGATE_FALLBACK not in primary.attributes
    assert backup.attributes[attr.TOLLGATE_DEPLOYMENT] == "fake-backup"
    assert backup.attributes[attr.TOLLGATE_FALLBACK] is True
    assert backup.attributes[attr.TOLLGATE_ATTEMPT] == 2
    assert backup.attributes[attr.SERVER_PORT] == stack.fake.port
    assert backup.status_code == "UNSET"
    assert server.attributes[attr.TOLLGATE_ALIAS] == "gpt-fallback"


# -- upstream failures ----------------------------------------------------------------------------------------------


def test_upstream_timeout_marks_both_spans_as_errors(stack: Stack) -> None:
    stack.fake.enqueue(Reply(delay=2.0))
    response = stack.chat(model="gpt-slow")
    assert response.status_code == 504
    server, [client] = stack.trace(trace_id_of(response))
    assert (client.status_code, client.attributes[attr.ERROR_TYPE]) == ("ERROR", "UpstreamTimeout")
    assert client.duration_ns < 1.5e9
    assert (server.status_code, server.attributes[attr.ERROR_TYPE]) == ("ERROR", "504")
    assert server.attributes[attr.HTTP_RESPONSE_STATUS_CODE] == 504


def test_unreachable_upstream_marks_both_spans_as_errors(stack: Stack) -> None:
    response = stack.chat(model="gpt-dead")
    assert response.status_code == 502
    server, [client] = stack.trace(trace_id_of(response))
    assert (client.status_code, client.attributes[attr.ERROR_TYPE]) == ("ERROR", "UpstreamUnavailable")
    assert client.attributes[attr.TOLLGATE_DEPLOYMENT] == "dead"
    assert (server.status_code, server.attributes[attr.ERROR_TYPE]) == ("ERROR", "502")


# -- W3C trace context ----------------------------------------------------------------------------------------------


def test_caller_traceparent_is_continued_and_passed_upstream(stack: Stack) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    response = stack.chat(headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    assert response.status_code == 200
    assert response.headers["x-tollgate-trace-id"] == caller_trace
    server, [client] = stack.trace(caller_trace)
    assert server.parent_span_id == caller_span
    assert client.parent_span_id == server.span_id
    # The caller's span is only a parent: the gateway neither emits nor ends it.
    assert all(s.span_id != caller_span for s in stack.otlp.spans())
    [upstream] = stack.upstream_requests(caller_trace)
    assert upstream.headers["traceparent"] == f"00-{caller_trace}-{client.span_id}-01"


def test_gateway_starts_a_trace_and_returns_its_id_when_the_caller_sends_none(stack: Stack) -> None:
    response = stack.chat(headers={"traceparent": "00-not-a-valid-header-01"})
    assert response.status_code == 200
    trace_id = trace_id_of(response)
    server, [client] = stack.trace(trace_id)
    assert server.parent_span_id is None
    [upstream] = stack.upstream_requests(trace_id)
    version, upstream_trace, parent, flags = upstream.headers["traceparent"].split("-")
    assert (version, upstream_trace, parent, flags) == ("00", trace_id, client.span_id, "01")


def test_unsampled_caller_gets_no_spans_but_keeps_its_trace_id(stack: Stack) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    response = stack.chat(headers={"traceparent": f"00-{caller_trace}-{caller_span}-00"})
    assert response.status_code == 200
    assert response.headers["x-tollgate-trace-id"] == caller_trace
    [upstream] = stack.upstream_requests(caller_trace)
    assert upstream.headers["traceparent"].startswith(f"00-{caller_trace}-")
    assert upstream.headers["traceparent"].endswith("-00")
    # Spans leave in the order they end: once a later sampled call's trace is in, an earlier one would be too.
    stack.trace(trace_id_of(stack.chat()))
    assert stack.otlp.trace(caller_trace) == []


# -- what spans never say -------------------------------------------------------------------------------------------


def test_spans_use_only_known_non_deprecated_names_and_never_show_the_key(stack: Stack) -> None:
    stack.fake.enqueue(SERVER_ERROR)
    responses = [
        stack.chat(max_tokens=8, temperature=0.0, seed=7, stop=["\n"], user="end-user-1"),
        stack.chat(stream=True),
        stack.chat(),  # retried: 500, then 200
        stack.chat(model="gpt-fallback"),
        stack.chat(model="gpt-dead"),
    ]
    spans: list[Span] = []
    for response in responses:
        server, clients = stack.trace(trace_id_of(response))
        spans += [server, *clients]
    assert len(spans) == 12
    names = {name for span in spans for name in [*span.attributes, *(n for e in span.events for n in e.attributes)]}
    assert names <= KNOWN_NAMES, f"names not in gateway/telemetry/attributes.py: {names - KNOWN_NAMES}"
    resource_names = {name for span in spans for name in span.resource}
    assert not (names | resource_names) & attr.DEPRECATED
    secret = stack.key.removeprefix("tg-")
    for span in spans:
        for text in everything_said(span):
            assert secret not in text, f"the virtual key appears in span {span.name!r}: {text!r}"


def test_message_content_is_not_captured_by_default(stack: Stack) -> None:
    marker = f"marker-{secrets.token_hex(6)}"
    messages = [
        {"role": "system", "content": f"You are a {marker} assistant."},
        {"role": "user", "content": f"say {marker}"},
    ]
    response = stack.chat(messages=messages)
    assert response.status_code == 200
    assert marker in response.json()["choices"][0]["message"]["content"]  # the fake echoes it back
    server, [client] = stack.trace(trace_id_of(response))
    for span in (server, client):
        assert not set(CONTENT_NAMES) & set(span.attributes)
        assert not any(marker in text for text in everything_said(span)), span
