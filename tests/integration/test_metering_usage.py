"""Metering end to end: what a provider reports (or tiktoken counts) ends up, priced, in the ledger.

A fake OpenAI server on a real socket answers; the official `openai` SDK and httpx are the clients; the gateway runs
in a thread (`run_gateway`) on SQLite and on PostgreSQL. Records are read back from the database after the app's
own ledger has flushed. Expected costs are recomputed here from litellm's price map JSON, expected estimates from
tiktoken with the cookbook's counting rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from support.fake_openai import FakeOpenAI, Reply
from support.gateway import RunningGateway, run_gateway
from support.metering import (
    StoredRecord,
    expected_cost,
    records_of,
    tiktoken_chat_prompt,
    tiktoken_text,
    wait_for_records,
)
from support.pg import BACKENDS, database_url_sync
from support.threads import free_port

PROVIDER_KEY = "sk-provider-metering"
# alias → (deployment name, upstream model); every one on the fake upstream but `unreachable`.
ROUTES = {
    "gpt-4o-mini": ("fake-mini", "gpt-4o-mini"),
    "reasoner": ("fake-o3", "o3-mini"),
    "house-reasoner": ("fake-house", "house-reasoner"),
    "house-model": ("fake-unpriced", "house-model-v1"),
    "unreachable": ("dead", "gpt-4o-mini"),
}
PRICES = """
prices:
  # USD per million tokens; reasoning differs from output so that its own rate shows in the cost.
  house-reasoner: {input: 2, cached_input: 0.5, output: 8, reasoning: 20}
"""
HOUSE_REASONER = {"input": Decimal(2), "cached": Decimal("0.5"), "output": Decimal(8), "reasoning": Decimal(20)}


def policy(base: str, dead: str) -> str:
    lines = ["defaults: {retries: 0, timeout: 10}", "models:"]
    for alias, (name, model) in ROUTES.items():
        api_base = dead if alias == "unreachable" else base
        lines.append(f"  - alias: {alias}")
        lines.append(f"    deployments: [{{name: {name}, provider: openai, model: {model}, api_base: '{api_base}',")
        lines.append("                   api_key_env: FAKE_KEY}]")
    return "\n".join(lines) + PRICES


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name the three largest moons of Jupiter, please."},
]
ANSWER = ["Ganymede", ", Callisto", " and", " Io", "."]


@dataclass
class Env:
    gateway: RunningGateway
    fake: FakeOpenAI
    backend: str


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI.running() as server:
        yield server


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory: Path = tmp_path_factory.mktemp(f"metering-{request.param}")
    text = policy(fake.base_url, f"http://127.0.0.1:{free_port()}/v1")
    with database_url_sync(request.param, directory) as url:
        environ = {"FAKE_KEY": PROVIDER_KEY, **({"DATABASE_URL": url} if request.param == "postgresql" else {})}
        with run_gateway(text, env=environ, data_dir=directory) as gateway:
            yield Env(gateway, fake, request.param)


@pytest.fixture
def gateway(env: Env) -> RunningGateway:
    return env.gateway


@pytest.fixture
def upstream(env: Env) -> FakeOpenAI:
    env.fake.requests.clear()
    env.fake.script.clear()
    env.fake.streams_cancelled = env.fake.streams_completed = 0
    return env.fake


@pytest.fixture
def team() -> str:
    """A team of its own per test: records and reports are read for it alone."""
    return "metering-" + uuid.uuid4().hex[:10]


@pytest.fixture
def key(gateway: RunningGateway, team: str) -> str:
    return gateway.create_key(team)


@pytest.fixture
def client(gateway: RunningGateway, key: str) -> OpenAI:
    return OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20)


# -- what the fake upstream answers -----------------------------------------------------------------------------


def usage_field(prompt: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    """OpenAI's usage object, with the details cached and reasoning tokens come in."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body(model: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-metering",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def stream_events(model: str, pieces: list[str], usage: dict[str, Any] | None) -> list[bytes]:
    """An OpenAI chat stream: role, one event per piece, finish, the usage-only chunk (if any), [DONE]."""
    base = {"id": "chatcmpl-metering", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}

    def event(**fields: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, **fields}) + b"\n\n"

    events = [event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [event(choices=[{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces]
    events.append(event(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage is not None:
        events.append(event(choices=[], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


def sse_payloads(body: bytes) -> list[bytes]:
    return [block.removeprefix(b"data: ") for block in body.split(b"\n\n") if block]


def usd_header(cost: Decimal) -> str:
    return f"${cost.quantize(Decimal('0.000001'), rounding=ROUND_HALF_UP):,.6f}"


def only_record(gateway: RunningGateway, team: str) -> StoredRecord:
    records = records_of(gateway, team)
    assert len(records) == 1, records
    return records[0]


def report(gateway: RunningGateway, kind: str, **params: str) -> dict[str, Any]:
    response = gateway.admin("GET", f"/v1/reports/{kind}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- reported usage, priced ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PricedCase:
    alias: str
    upstream_model: str
    prompt: int
    cached: int
    completion: int
    reasoning: int

    def cost(self) -> Decimal:
        if self.upstream_model in ("gpt-4o-mini", "o3-mini"):
            return expected_cost(self.upstream_model, self.prompt, self.cached, self.completion, self.reasoning)
        million = Decimal(1_000_000)
        r = {name: rate / million for name, rate in HOUSE_REASONER.items()}
        return (
            (self.prompt - self.cached) * r["input"]
            + self.cached * r["cached"]
            + (self.completion - self.reasoning) * r["output"]
            + self.reasoning * r["reasoning"]
        )

    def cost_at_plain_rates(self) -> Decimal:
        """What it would cost if cached and reasoning tokens were billed as plain input and output."""
        return PricedCase(self.alias, self.upstream_model, self.prompt, 0, self.completion, 0).cost()


PRICED = [
    PricedCase("gpt-4o-mini", "gpt-4o-mini", prompt=20_480, cached=16_384, completion=1_200, reasoning=0),
    PricedCase("reasoner", "o3-mini", prompt=9_000, cached=4_096, completion=7_000, reasoning=6_144),
    PricedCase("house-reasoner", "house-reasoner", prompt=5_000, cached=2_048, completion=4_000, reasoning=3_000),
]


@pytest.mark.parametrize("case", PRICED, ids=lambda c: c.upstream_model)
def test_non_streamed_chat_records_the_providers_exact_usage_with_cached_and_reasoning_at_their_rates(
    case: PricedCase, client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    usage = usage_field(case.prompt, case.cached, case.completion, case.reasoning)
    upstream.enqueue(Reply(body=completion_body(case.upstream_model, "".join(ANSWER), usage)))

    raw = client.chat.completions.with_raw_response.create(model=case.alias, messages=MESSAGES)  # type: ignore[arg-type]
    completion = raw.parse()

    assert completion.usage is not None and completion.usage.prompt_tokens == case.prompt
    record = only_record(gateway, team)
    assert record.request_id == raw.headers["x-request-id"]
    assert (record.status, record.http_status, record.usage_source) == ("ok", 200, "reported")
    assert (record.alias, record.upstream_model, record.endpoint) == (
        case.alias,
        case.upstream_model,
        "chat/completions",
    )
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens, record.reasoning_tokens) == (
        case.prompt,
        case.cached,
        case.completion,
        case.reasoning,
    )
    assert record.cost_usd == case.cost()  # exact, in Decimal
    assert case.cost() != case.cost_at_plain_rates()
    assert raw.headers["x-tollgate-cost-usd"] == usd_header(case.cost())


def test_streamed_chat_where_the_client_did_not_ask_for_usage_hides_the_chunk_and_records_the_exact_usage(
    gateway: RunningGateway, key: str, upstream: FakeOpenAI, team: str
) -> None:
    case = PRICED[1]
    usage = usage_field(case.prompt, case.cached, case.completion, case.reasoning)
    events = stream_events(case.upstream_model, ANSWER, usage)
    upstream.enqueue(Reply(events=events))

    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": case.alias, "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        body = response.read()

    [call] = upstream.calls()
    assert call.json["stream_options"] == {"include_usage": True}
    # Every event but the usage-only chunk, byte for byte.
    assert body == b"".join(e for e in events if b'"usage"' not in e)
    assert all(b'"usage"' not in payload for payload in sse_payloads(body))
    record = only_record(gateway, team)
    assert record.request_id == request_id
    assert (record.status, record.usage_source) == ("ok", "reported")
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens, record.reasoning_tokens) == (
        case.prompt,
        case.cached,
        case.completion,
        case.reasoning,
    )
    assert record.cost_usd == case.cost()


def test_streamed_chat_where_the_client_asked_for_usage_gets_the_usage_chunk(
    client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    case = PRICED[0]
    usage = usage_field(case.prompt, case.cached, case.completion, case.reasoning)
    upstream.enqueue(Reply(events=stream_events(case.upstream_model, ANSWER, usage)))

    stream = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        model=case.alias,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())

    [call] = upstream.calls()
    assert call.json["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(ANSWER)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.prompt_tokens == case.prompt and final.usage.completion_tokens == case.completion
    assert final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == case.cached
    record = only_record(gateway, team)
    assert record.request_id == request_id
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        case.prompt,
        case.cached,
        case.completion,
    )
    assert record.cost_usd == case.cost()


# -- estimated usage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_provider_that_reports_no_usage_is_billed_from_a_tiktoken_estimate(
    stream: bool, gateway: RunningGateway, key: str, upstream: FakeOpenAI, team: str
) -> None:
    if stream:
        upstream.enqueue(Reply(events=stream_events("gpt-4o-mini", ANSWER, usage=None)))
    else:
        upstream.enqueue(Reply(body=completion_body("gpt-4o-mini", "".join(ANSWER), usage=None)))

    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    )

    assert response.status_code == 200
    if stream:
        assert response.content.endswith(b"data: [DONE]\n\n")
    prompt = tiktoken_chat_prompt(MESSAGES)
    completion = tiktoken_text("".join(ANSWER))
    record = only_record(gateway, team)
    assert record.request_id == response.headers["x-request-id"]
    assert (record.status, record.usage_source) == ("ok", "estimated")
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens, record.reasoning_tokens) == (
        prompt,
        0,
        completion,
        0,
    )
    assert record.cost_usd == expected_cost("gpt-4o-mini", prompt, 0, completion, 0)
    if not stream:
        assert response.headers["x-tollgate-cost-usd"] == usd_header(record.cost_usd)


# -- unpriced models ----------------------------------------------------------------------------------------------


def test_an_unpriced_model_records_a_null_cost_and_the_cost_report_shows_it_as_unpriced(
    client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    upstream.enqueue(Reply(body=completion_body("house-model-v1", "hi", usage_field(40, 0, 7, 0))))

    raw = client.chat.completions.with_raw_response.create(model="house-model", messages=MESSAGES)  # type: ignore[arg-type]

    assert raw.headers["x-tollgate-cost-usd"] == "unpriced"
    record = only_record(gateway, team)
    assert record.request_id == raw.headers["x-request-id"]
    assert record.cost_usd is None
    assert (record.input_tokens, record.output_tokens) == (40, 7)
    costs = report(gateway, "cost", group_by="model", team=team)
    [group] = costs["data"]
    assert group["group"] == "house-model-v1"
    assert (group["requests"], group["priced_requests"], group["unpriced_requests"]) == (1, 0, 1)
    assert group["cost_usd"] is None  # unknown, not $0
    assert (group["unpriced_input_tokens"], group["unpriced_output_tokens"]) == (40, 7)
    assert costs["total"]["cost_usd"] is None


# -- failures -----------------------------------------------------------------------------------------------------


def test_an_upstream_error_is_one_record_with_status_upstream_error(
    client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    error = {"error": {"message": "bad temperature", "type": "invalid_request_error", "param": None, "code": None}}
    upstream.enqueue(Reply(status=400, body=error))

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert len(upstream.calls()) == 1
    record = only_record(gateway, team)
    assert record.request_id == caught.value.response.headers["x-request-id"]
    assert (record.status, record.http_status) == ("upstream_error", 400)
    assert (record.input_tokens, record.output_tokens) == (0, 0)


def test_an_unreachable_upstream_is_one_record_with_status_upstream_error(
    client: OpenAI, gateway: RunningGateway, team: str
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="unreachable", messages=MESSAGES)  # type: ignore[arg-type]

    assert caught.value.status_code == 502
    record = only_record(gateway, team)
    assert record.request_id == caught.value.response.headers["x-request-id"]
    assert (record.status, record.http_status, record.deployment) == ("upstream_error", 502, "dead")


def test_a_call_to_a_priced_model_that_never_got_an_answer_is_not_reported_as_unpriced(
    client: OpenAI, gateway: RunningGateway, team: str
) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="unreachable", messages=MESSAGES)  # type: ignore[arg-type]

    assert only_record(gateway, team).cost_usd == 0
    [group] = report(gateway, "cost", group_by="model", team=team)["data"]
    assert (group["group"], group["unpriced_requests"], group["cost_usd"]) == ("gpt-4o-mini", 0, "0")


def test_a_client_that_leaves_mid_stream_is_one_record_billing_the_tokens_streamed_so_far(
    gateway: RunningGateway, key: str, upstream: FakeOpenAI, team: str
) -> None:
    pieces = [f" word{i}" for i in range(40)]
    # One event every 0.25 s: the client leaves after the fourth piece, long before the fifth is sent.
    upstream.enqueue(Reply(events=stream_events("gpt-4o-mini", pieces, usage=None), event_gap=0.25))
    received: list[str] = []
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = orjson.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                received.append(delta["content"])
                if len(received) == 4:
                    break

    assert upstream.wait_for(lambda: upstream.streams_cancelled == 1, timeout=5)
    [record] = wait_for_records(gateway, team, 1)
    assert records_of(gateway, team) == [record]  # and no second one
    assert record.request_id == request_id
    assert (record.status, record.usage_source) == ("client_disconnected", "estimated")
    assert record.input_tokens == tiktoken_chat_prompt(MESSAGES)
    assert record.output_tokens == tiktoken_text("".join(received)) > 0
    assert record.cost_usd == expected_cost("gpt-4o-mini", record.input_tokens, 0, record.output_tokens, 0)


# -- attribution --------------------------------------------------------------------------------------------------


def test_tollgate_tags_are_recorded_and_group_the_reports_by_tag(
    client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    tagged = [{"project": "apollo", "env": "prod"}, {"project": "apollo"}, {"project": "gemini"}, None]
    ids = {}
    for i, tags in enumerate(tagged):
        upstream.enqueue(Reply(body=completion_body("gpt-4o-mini", "ok", usage_field(100 + i, 0, 10, 0))))
        extra = {"tollgate": {"tags": tags}} if tags is not None else None
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body=extra,
        )
        ids[raw.headers["x-request-id"]] = tags or {}

    assert all("tollgate" not in call.json for call in upstream.calls())  # never forwarded
    records = records_of(gateway, team)
    assert {r.request_id: r.tags for r in records} == ids
    usage = report(gateway, "usage", group_by="tag", tag="project", team=team)
    by_project = {g["group"]: (g["requests"], g["input_tokens"]) for g in usage["data"]}
    assert by_project == {"apollo": (2, 100 + 101), "gemini": (1, 102), None: (1, 103)}
    costs = report(gateway, "cost", group_by="tag", tag="env", team=team)
    assert {g["group"]: g["requests"] for g in costs["data"]} == {"prod": 1, None: 3}


def test_the_user_field_is_recorded_and_groups_the_reports_by_user(
    client: OpenAI, gateway: RunningGateway, upstream: FakeOpenAI, team: str
) -> None:
    for user in ("alice@example.com", "bob", "alice@example.com"):
        upstream.enqueue(Reply(body=completion_body("gpt-4o-mini", "ok", usage_field(50, 0, 5, 0))))
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user=user)  # type: ignore[arg-type]

    assert [call.json["user"] for call in upstream.calls()] == ["alice@example.com", "bob", "alice@example.com"]
    records = records_of(gateway, team)
    assert sorted(r.user or "" for r in records) == ["alice@example.com", "alice@example.com", "bob"]
    usage = report(gateway, "usage", group_by="user", team=team)
    assert {g["group"]: g["requests"] for g in usage["data"]} == {"alice@example.com": 2, "bob": 1}


def test_every_response_carries_an_x_request_id_that_is_its_records_id(
    gateway: RunningGateway, key: str, upstream: FakeOpenAI, team: str
) -> None:
    upstream.enqueue(
        Reply(body=completion_body("gpt-4o-mini", "ok", usage_field(10, 0, 2, 0))),
        Reply(events=stream_events("gpt-4o-mini", ANSWER, usage_field(10, 0, 5, 0))),
        Reply(status=422, body={"error": {"message": "nope", "type": "invalid_request_error"}}),
    )
    headers = {"Authorization": f"Bearer {key}"}
    seen = {}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=20) as http:
        for stream in (False, True, False):
            response = http.post(
                "/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
            )
            seen[response.headers["x-request-id"]] = response.status_code
        refused = http.post("/chat/completions", json={"model": "no-such-model", "messages": MESSAGES})

    assert sorted(seen.values()) == [200, 200, 422]
    assert refused.status_code == 404 and refused.headers["x-request-id"].startswith("req_")
    # One record per request that reached an upstream; the refused one never did.
    assert {r.request_id: r.http_status for r in records_of(gateway, team)} == seen
