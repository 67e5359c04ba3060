"""StreamMeter on streams split at arbitrary byte boundaries: reported usage kept exactly, the usage-only chunk
hidden from clients that did not ask for it, estimates from streamed deltas when nothing is reported."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from gateway.accounting import stream as stream_module
from gateway.accounting import tokens
from gateway.accounting.stream import StreamMeter
from gateway.accounting.usage import Output, Usage

DONE = b"data: [DONE]\n\n"
USAGE = {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 17, "audio_tokens": 0},
}
WORDS = ["Hé", "llo", ",", " wörld", "!", " 東京", " is", ' "quoted"', " usage", " finish_reason", "\n\n", " 🎉"]


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(choices: list[dict[str, Any]], usage: Any = None, with_usage_key: bool = True, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1732300000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": choices,
        **extra,
    }
    if with_usage_key:
        body["usage"] = usage  # OpenAI sends "usage": null on every chunk once include_usage is on
    return event(body)


def content_events(words: list[str]) -> list[bytes]:
    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    ]
    events += [chunk([{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}]) for w in words]
    events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    return events


USAGE_EVENT = chunk([], usage=USAGE)
BODY = b"".join(content_events(WORDS))
STREAM = BODY + USAGE_EVENT + DONE
TEXT = "".join(WORDS)


def random_splits(data: bytes, count: int, seed: int = 7) -> list[list[bytes]]:
    rng = random.Random(seed)
    splits = []
    for _ in range(count):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        bounds = [0, *cuts, len(data)]
        splits.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return splits


def every_split(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(len(data) + 1)]


def relay(meter: StreamMeter, pieces: list[bytes]) -> bytes:
    return b"".join(meter.feed(piece) for piece in pieces) + meter.finish()


def test_a_whole_stream_is_metered_and_relayed_unchanged() -> None:
    meter = StreamMeter()
    assert relay(meter, [STREAM]) == STREAM
    assert meter.usage == Usage(1117, 1024, 46, 17, "reported")
    assert meter.saw_usage_only_chunk
    assert meter.done
    assert meter.response_id == "chatcmpl-abc123"
    assert meter.response_model == "gpt-4o-mini-2024-07-18"
    assert meter.finish_reasons == {0: "stop"}
    assert meter.events == len(WORDS) + 4
    assert meter.final_usage("chat/completions", {}, "gpt-4o-mini") == meter.usage


def test_any_split_keeps_the_exact_usage_and_the_bytes() -> None:
    for pieces in every_split(STREAM) + random_splits(STREAM, 300):
        meter = StreamMeter()
        assert relay(meter, pieces) == STREAM, pieces
        assert meter.usage == Usage(1117, 1024, 46, 17), pieces
        assert meter.finish_reasons == {0: "stop"}, pieces
        assert meter.saw_usage_only_chunk


def test_the_usage_only_chunk_is_hidden_from_clients_that_did_not_ask() -> None:
    for pieces in every_split(STREAM) + random_splits(STREAM, 300, seed=11):
        meter = StreamMeter(hide_usage_chunk=True)
        assert relay(meter, pieces) == BODY + DONE, pieces
        assert meter.usage == Usage(1117, 1024, 46, 17), pieces


def test_hiding_works_on_crlf_streams_cut_inside_a_crlf() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    for pieces in every_split(crlf):
        meter = StreamMeter(hide_usage_chunk=True)
        assert relay(meter, pieces) == BODY + DONE, pieces
        assert meter.usage == Usage(1117, 1024, 46, 17)


def test_hiding_holds_back_only_an_unfinished_event() -> None:
    meter = StreamMeter(hide_usage_chunk=True)
    first, second = content_events(["a", "b"])[:2]
    assert meter.feed(first + second[:10]) == first
    assert meter.feed(second[10:]) == second
    assert meter.feed(USAGE_EVENT[:30]) == b""
    assert meter.feed(USAGE_EVENT[30:] + DONE) == DONE
    assert meter.finish() == b""


def test_usage_inside_a_content_chunk_is_kept_and_relayed() -> None:
    # vLLM's continuous usage stats put a cumulative usage in chunks that also carry choices: not usage-only.
    last = chunk(
        [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}],
        usage={"prompt_tokens": 3, "completion_tokens": 1},
    )
    stream = content_events(["a"])[0] + last + DONE
    meter = StreamMeter(hide_usage_chunk=True)
    assert relay(meter, [stream]) == stream
    assert meter.usage == Usage(3, 0, 1, 0)
    assert not meter.saw_usage_only_chunk


def test_without_reported_usage_the_output_is_estimated_from_the_deltas() -> None:
    request = {"messages": [{"role": "user", "content": "Say hello"}]}
    expected = Usage(
        input_tokens=tokens.count_chat_prompt(request["messages"], model="gpt-4o-mini"),
        output_tokens=tokens.count_text(TEXT, "gpt-4o-mini"),
        source="estimated",
    )
    for pieces in [[BODY + DONE], *random_splits(BODY + DONE, 100, seed=3)]:
        meter = StreamMeter()
        relay(meter, pieces)
        assert meter.usage is None
        assert meter.output() == Output(TEXT), pieces
        assert meter.final_usage("chat/completions", request, "gpt-4o-mini") == expected


def test_streamed_tool_calls_are_reassembled() -> None:
    def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
        return chunk([{"index": 0, "delta": d, "finish_reason": finish}], with_usage_key=False)

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    second = {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
    events = [
        delta({"role": "assistant", "content": None, "tool_calls": [call]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "Paris"}'}}]}),
        delta({"tool_calls": [second]}),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        delta({}, finish="tool_calls"),
    ]
    meter = StreamMeter()
    relay(meter, [b"".join(events) + DONE])
    assert meter.output() == Output("", (("get_weather", '{"location": "Paris"}'), ("get_time", "{}")))
    assert meter.finish_reasons == {0: "tool_calls"}


def test_legacy_completions_stream() -> None:
    def text_chunk(text: str, finish: str | None = None) -> bytes:
        return event(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": "gpt-3.5-turbo-instruct",
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
        )

    meter = StreamMeter()
    relay(meter, [text_chunk("This"), text_chunk(" is"), text_chunk(" a test", "length"), DONE])
    assert meter.output() == Output("This is a test")
    assert meter.finish_reasons == {0: "length"}
    assert meter.final_usage("completions", {"prompt": "Say"}, "gpt-3.5-turbo-instruct").output_tokens == 4


def test_several_choices_have_their_own_finish_reasons() -> None:
    events = [
        chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
        chunk([{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]),
        chunk([{"index": 1, "delta": {}, "finish_reason": "length"}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ]
    meter = StreamMeter()
    relay(meter, [b"".join(events)])
    assert meter.finish_reasons == {0: "stop", 1: "length"}


def test_azure_content_filter_preamble_does_not_hide_the_response_id() -> None:
    preamble = event(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0}],
        }
    )
    meter = StreamMeter(hide_usage_chunk=True)
    stream = preamble + BODY + DONE
    assert relay(meter, [stream]) == stream
    assert meter.response_id == "chatcmpl-abc123"
    assert meter.response_model == "gpt-4o-mini-2024-07-18"


def test_an_upstream_error_event_is_recorded() -> None:
    error = event({"error": {"message": "The server had an error", "type": "server_error", "code": None}})
    meter = StreamMeter()
    relay(meter, [content_events(["a"])[0], error])
    assert meter.error is not None and meter.error["type"] == "server_error"


def test_a_stream_cut_short_estimates_what_was_streamed() -> None:
    truncated = BODY[: len(BODY) // 2]
    meter = StreamMeter()
    relay(meter, [truncated])
    streamed = meter.output().text
    assert streamed and TEXT.startswith(streamed)
    assert not meter.done
    assert meter.final_usage("chat/completions", {"messages": []}, "gpt-4o").output_tokens == tokens.count_text(
        streamed, "gpt-4o"
    )


def test_an_unterminated_last_event_is_still_metered() -> None:
    meter = StreamMeter(hide_usage_chunk=True)
    out = relay(meter, [BODY + USAGE_EVENT[:-2]])
    assert out == BODY + USAGE_EVENT[:-2]  # not a complete event: relayed as it came
    assert meter.usage == Usage(1117, 1024, 46, 17)


def test_responses_api_stream() -> None:
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4.1-2025-04-14",
        "status": "in_progress",
        "output": [],
        "usage": None,
    }
    completed = {
        **response,
        "status": "completed",
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 5},
        },
    }

    def typed(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\n".encode() + event({"type": kind, **fields})

    stream = (
        typed("response.created", response=response)
        + typed("response.output_text.delta", item_id="msg_1", delta="Hello")
        + typed("response.output_text.delta", item_id="msg_1", delta=" there")
        + typed("response.function_call_arguments.delta", item_id="fc_1", delta='{"a":')
        + typed("response.function_call_arguments.delta", item_id="fc_1", delta="1}")
        + typed("response.completed", response=completed)
    )
    meter = StreamMeter()
    relay(meter, [stream])
    assert meter.response_id == "resp_1"
    assert meter.response_model == "gpt-4.1-2025-04-14"
    assert meter.usage == Usage(36, 0, 87, 5)

    no_usage = StreamMeter()
    relay(no_usage, [stream.rsplit(b"event: response.completed", 1)[0]])
    assert no_usage.output() == Output("Hello there", (("", '{"a":1}'),))


def test_long_streams_without_usage_fold_their_events_to_bound_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "RAW_LIMIT", 2_000)
    words = [f" w{i}" for i in range(300)]
    meter = StreamMeter()
    for piece in content_events(words):
        meter.feed(piece)
        assert meter._raw_size <= 2_000 + len(piece)
    meter.finish()
    assert meter.output() == Output("".join(words))


@pytest.mark.parametrize(
    ("payload", "worth_parsing"),
    [
        (b'{"usage":{"prompt_tokens":1}}', True),
        (b'{"usage" :  {"a":1}}', True),
        (b'{"usage":null}', False),
        (b'{"usage": null, "x": 1}', False),
        (b'{"usage" :\n null}', False),
        (b'{"content":"the \\"usage\\": {} field"}', False),
        (b'{"a":"\\"usage\\"","usage":{}}', True),
        (b'{"finish_reason":null}', False),
        (b'{"finish_reason":"stop"}', True),
        (b'{"choices":[{"finish_reason":null},{"finish_reason":"length"}]}', True),
    ],
)
def test_events_are_parsed_only_when_they_carry_a_value(payload: bytes, worth_parsing: bool) -> None:
    assert (stream_module._WORTH_PARSING(payload) is not None) is worth_parsing
