from __future__ import annotations

import orjson
import pytest

from gateway.protocol.sse import DONE, EventSplitter, encode_event, error_event

CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "héllo ✓"}}]},
    {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 5}},
]
EXPECTED = [orjson.dumps(chunk) for chunk in CHUNKS] + [b"[DONE]"]
STREAM = b"".join(encode_event(chunk) for chunk in CHUNKS) + DONE


def feed_all(splitter: EventSplitter, pieces: list[bytes]) -> list[bytes]:
    return [payload for piece in pieces for payload in splitter.feed(piece)]


def every_two_way_split(stream: bytes) -> list[list[bytes]]:
    return [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]


def every_three_way_split(stream: bytes) -> list[list[bytes]]:
    return [[stream[:i], stream[i:j], stream[j:]] for i in range(len(stream) + 1) for j in range(i, len(stream) + 1)]


def test_encode_event_writes_one_data_line_and_a_blank_line() -> None:
    assert encode_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


def test_a_whole_stream_in_one_chunk_yields_every_payload_including_done() -> None:
    assert EventSplitter().feed(STREAM) == EXPECTED


def test_events_split_at_every_byte_offset_are_reassembled() -> None:
    for pieces in every_two_way_split(STREAM):
        assert feed_all(EventSplitter(), pieces) == EXPECTED, pieces


def test_events_split_at_every_pair_of_byte_offsets_are_reassembled() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'

    for pieces in every_three_way_split(stream):
        assert feed_all(EventSplitter(), pieces) == [b'{"a":1}', b'{"b":2}', b"[DONE]"], pieces


def test_events_fed_one_byte_at_a_time_are_reassembled() -> None:
    assert feed_all(EventSplitter(), [bytes([b]) for b in STREAM]) == EXPECTED


def test_an_incomplete_event_is_held_until_its_blank_line_arrives() -> None:
    splitter = EventSplitter()

    assert splitter.feed(b'data: {"a":1}\n') == []
    assert splitter.feed(b"\n") == [b'{"a":1}']
    assert splitter.feed(b"") == []


def test_crlf_line_endings_are_handled() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")

    assert EventSplitter().feed(stream) == EXPECTED


def test_crlf_events_split_at_every_byte_offset_are_reassembled() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")

    for pieces in every_two_way_split(stream):
        assert feed_all(EventSplitter(), pieces) == EXPECTED, pieces


def test_bare_cr_line_endings_are_handled() -> None:
    assert EventSplitter().feed(b"data: a\r\rdata: b\r\r") == [b"a", b"b"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert EventSplitter().feed(b"data: first\ndata: second\ndata:third\n\n") == [b"first\nsecond\nthird"]


def test_multi_line_data_split_at_every_byte_offset_is_reassembled() -> None:
    stream = b"data: first\ndata: second\n\ndata: [DONE]\n\n"

    for pieces in every_two_way_split(stream):
        assert feed_all(EventSplitter(), pieces) == [b"first\nsecond", b"[DONE]"], pieces


def test_multi_line_data_with_crlf_split_at_every_byte_offset_is_reassembled() -> None:
    # A CRLF split between its CR and its LF must still end one line, not two (which would end the event early).
    stream = b"data: first\r\ndata: second\r\n\r\ndata: [DONE]\r\n\r\n"

    for pieces in every_two_way_split(stream):
        assert feed_all(EventSplitter(), pieces) == [b"first\nsecond", b"[DONE]"], pieces


def test_comments_event_and_id_lines_are_skipped() -> None:
    stream = (
        b": keep-alive\n\nevent: message\nid: 41\nretry: 1000\ndata: payload\n\n: another comment\ndata: [DONE]\n\n"
    )

    for pieces in every_two_way_split(stream):
        assert feed_all(EventSplitter(), pieces) == [b"payload", b"[DONE]"], pieces


def test_an_event_without_data_yields_nothing() -> None:
    assert EventSplitter().feed(b"event: ping\n\n: comment only\n\n") == []


@pytest.mark.parametrize("line", [b"data:{}", b"data: {}"])
def test_the_space_after_data_colon_is_optional(line: bytes) -> None:
    assert EventSplitter().feed(line + b"\n\n") == [b"{}"]


def test_error_event_is_a_parseable_event_in_the_openai_error_shape() -> None:
    event = error_event("upstream went away", code="upstream_disconnected")

    (payload,) = EventSplitter().feed(event)
    assert orjson.loads(payload) == {
        "error": {"message": "upstream went away", "type": "api_error", "param": None, "code": "upstream_disconnected"}
    }


def test_error_event_carries_the_given_type() -> None:
    (payload,) = EventSplitter().feed(error_event('quote " and\nnewline', type="rate_limit_error"))

    error = orjson.loads(payload)["error"]
    assert error == {"message": 'quote " and\nnewline', "type": "rate_limit_error", "param": None, "code": None}
