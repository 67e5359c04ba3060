"""Reported usage in every OpenAI body shape, and estimates when there is none."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.accounting import tokens
from gateway.accounting.usage import (
    Output,
    Usage,
    ask_for_usage,
    estimate_prompt_tokens,
    estimate_usage,
    is_usage_only_chunk,
    output_from_response,
    usage_from_response,
)

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The image shows a wooden boardwalk.", "refusal": None},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

REASONING_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-r1",
    "object": "chat.completion",
    "model": "o3-mini-2025-01-31",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 25,
        "completion_tokens": 1906,
        "total_tokens": 1931,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1856},
    },
}

RESPONSES_API: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "In a peaceful grove beneath a silver moon...", "annotations": []}
            ],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": '{"q":"x"}'},
    ],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}

EMBEDDINGS: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}


def test_chat_usage_with_cached_tokens() -> None:
    assert usage_from_response(CHAT_RESPONSE) == Usage(1117, 1024, 46, 0, "reported")


def test_reasoning_tokens_are_counted_separately() -> None:
    usage = usage_from_response(REASONING_RESPONSE)
    assert usage == Usage(input_tokens=25, cached_input_tokens=0, output_tokens=1906, reasoning_tokens=1856)
    assert usage is not None and usage.total_tokens == 1931


def test_responses_api_usage() -> None:
    assert usage_from_response(RESPONSES_API) == Usage(36, 0, 87, 0)
    # The streamed form wraps the response in a `response.completed` event.
    event = {"type": "response.completed", "sequence_number": 9, "response": RESPONSES_API}
    assert usage_from_response(event) == Usage(36, 0, 87, 0)


def test_embeddings_usage_has_no_output() -> None:
    assert usage_from_response(EMBEDDINGS) == Usage(8, 0, 0, 0)


def test_completions_usage() -> None:
    body = {
        "object": "text_completion",
        "choices": [{"text": "hi", "index": 0}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    assert usage_from_response(body) == Usage(5, 0, 7, 0)


def test_anthropic_shaped_usage_counts_cache_reads_and_writes_as_input() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 300,
        "output_tokens": 50,
    }
    assert usage_from_response({"usage": usage}) == Usage(2310, 2000, 50, 0)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"usage": None},
        {"usage": {}},
        {"usage": {"prompt_tokens": -1}},
        {"usage": {"prompt_tokens": True}},
        {"usage": {"prompt_tokens": "12"}},
        [],
        "usage",
    ],
)
def test_absent_or_malformed_usage_is_none(body: Any) -> None:
    assert usage_from_response(body) is None


def test_null_details_count_as_zero() -> None:
    body = {
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    }
    assert usage_from_response(body) == Usage(3, 0, 4, 0)


def test_usage_only_chunk_detection() -> None:
    usage_only = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1}}
    assert is_usage_only_chunk(usage_only)
    assert not is_usage_only_chunk({**usage_only, "usage": None})
    assert not is_usage_only_chunk({**usage_only, "choices": [{"index": 0, "delta": {}}]})
    # Azure's content-filter preamble has no choices and no usage.
    assert not is_usage_only_chunk({"id": "", "choices": [], "prompt_filter_results": []})


def test_output_of_chat_completions_and_responses_bodies() -> None:
    assert output_from_response(CHAT_RESPONSE) == Output("The image shows a wooden boardwalk.")
    assert output_from_response(RESPONSES_API) == Output(
        "In a peaceful grove beneath a silver moon...", (("get_weather", '{"q":"x"}'),)
    )
    tool_reply = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                }
            },
            {"text": " legacy"},
        ]
    }
    assert output_from_response(tool_reply) == Output(" legacy", (("f", "{}"),))
    assert output_from_response(EMBEDDINGS) == Output()
    assert output_from_response(None) == Output()


def test_estimates_for_each_endpoint() -> None:
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What's 2+2?"}],
        "tools": [
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
        ],
    }
    assert estimate_prompt_tokens("chat/completions", chat, "gpt-4o-mini") == tokens.count_chat_prompt(
        chat["messages"], chat["tools"], model="gpt-4o-mini"
    )
    assert estimate_prompt_tokens("embeddings", {"input": ["a b", "c"]}, "text-embedding-3-small") == (
        tokens.count_text("a b", "text-embedding-3-small") + tokens.count_text("c", "text-embedding-3-small")
    )
    assert estimate_prompt_tokens("completions", {"prompt": "Say this is a test"}, "gpt-3.5-turbo-instruct") == 5
    assert estimate_prompt_tokens("images/generations", {"prompt": "x"}, "dall-e-3") == 0

    usage = estimate_usage("chat/completions", chat, "gpt-4o-mini", Output("4", (("add", '{"a":2,"b":2}'),)))
    assert usage.source == "estimated"
    assert usage.output_tokens == tokens.count_completion("4", [("add", '{"a":2,"b":2}')], "gpt-4o-mini")
    assert estimate_usage("embeddings", {"input": "hello"}, "text-embedding-3-small", Output()) == Usage(
        1, 0, 0, 0, "estimated"
    )


def test_responses_api_requests_are_estimated_like_chat() -> None:
    request: dict[str, Any] = {
        "model": "gpt-4.1",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 12}'},
        ],
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }
    as_chat = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 12}'},
    ]
    chat_tools = [{"type": "function", "function": request["tools"][0]}]
    expected = tokens.count_chat_prompt(as_chat, chat_tools, model="gpt-4.1")
    assert estimate_prompt_tokens("responses", request, "gpt-4.1") == expected
    assert estimate_prompt_tokens("responses", {"input": "Hi there"}, "gpt-4.1") == tokens.count_chat_prompt(
        [{"role": "user", "content": "Hi there"}], model="gpt-4.1"
    )


def test_streams_ask_the_upstream_for_usage() -> None:
    body = {"model": "m", "stream": True, "messages": []}
    upstream, client_asked = ask_for_usage("chat/completions", body)
    assert upstream == {**body, "stream_options": {"include_usage": True}}
    assert not client_asked
    assert "stream_options" not in body  # the client's body is left as it was

    asked = {**body, "stream_options": {"include_usage": True}}
    assert ask_for_usage("chat/completions", asked) == (asked, True)
    declined = {**body, "stream_options": {"include_usage": False, "other": 1}}
    assert ask_for_usage("completions", declined) == (
        {**body, "stream_options": {"include_usage": True, "other": 1}},
        False,
    )
    assert ask_for_usage("chat/completions", {"model": "m", "messages": []}) == ({"model": "m", "messages": []}, True)
    assert ask_for_usage("embeddings", {"model": "m", "input": "x"}) == ({"model": "m", "input": "x"}, True)
