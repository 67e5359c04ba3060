"""Metering a relayed SSE stream at a few bytes' search per event (DESIGN.md §7: events are the unit of streaming
cost).

JSON is parsed only for events that carry a usage or finish-reason value, an upstream error, and the first events
until the response id is known. Every other event is kept as bytes and parsed only if an estimate is needed (the
provider reported no usage) or, for long streams, in batches that bound memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.accounting.usage import Output, Usage, estimate_usage, is_usage_only_chunk, usage_from_response
from gateway.protocol.sse import EventSplitter

# A `"usage"` or `"finish_reason"` key with a value other than null: the events worth parsing. Inside a JSON
# string quotes are escaped, so a match is a real key (a false positive would only cost a parse). The possessive
# `\s*+` keeps `: null` from matching by giving back its space. One C-level scan: ~0.6 µs on a typical chunk.
_WORTH_PARSING = re.compile(rb'"(?:usage|finish_reason)"\s*+:\s*+(?!null)').search
_HAS_USAGE = re.compile(rb'"usage"\s*+:\s*+(?!null)').search
# Event bytes kept for an estimate before they are folded into text, bounding a long stream's memory.
RAW_LIMIT = 256 * 1024
# Events parsed up front until one carries the response id (Azure opens with an id-less content-filter event).
FIRST_EVENTS = 3


class StreamMeter:
    """Meters one relayed SSE stream: feed it every chunk as it is relayed, and relay what `feed` returns.

    With `hide_usage_chunk` (the client did not ask for usage but the gateway did), `feed` holds back a trailing
    partial event and returns the complete events received so far minus the usage-only chunk (line ends
    normalized to LF); otherwise it returns the chunk unchanged. Call `finish` at the end of the stream and relay
    what it returns (the held-back tail, if any).
    """

    __slots__ = (
        "_calls",
        "_held",
        "_hide",
        "_keep",
        "_raw",
        "_raw_size",
        "_splitter",
        "_strip_pending",
        "_text",
        "done",
        "error",
        "events",
        "finish_reasons",
        "response_id",
        "response_model",
        "saw_usage_only_chunk",
        "usage",
    )

    def __init__(self, *, hide_usage_chunk: bool = False, keep_output: bool = False) -> None:
        self._hide = hide_usage_chunk
        # Keep the streamed text even once usage is reported (it is then only needed for content capture).
        self._keep = keep_output
        self._splitter = EventSplitter()
        self._held = b""
        self._strip_pending = False
        self._raw: list[bytes] = []
        self._raw_size = 0
        self._text: list[str] = []
        self._calls: dict[tuple[int, int | str], list[str]] = {}
        self.events = 0
        self.done = False  # `data: [DONE]` seen
        self.usage: Usage | None = None  # the last usage the provider reported
        self.saw_usage_only_chunk = False
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: dict[int, str] = {}  # by choice index
        self.error: Mapping[str, Any] | None = None  # an error event sent by the upstream mid-stream

    # -- the hot path ---------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if not self._hide:
            self._meter(self._splitter.feed(chunk))
            return chunk
        buffer = _normalize_newlines(self._held + chunk if self._held else chunk)
        end = buffer.rfind(b"\n\n") + 2
        if end == 1:
            self._held = buffer
            return b""
        self._held = buffer[end:]
        complete = buffer[:end]
        self._meter(self._splitter.feed(complete))
        if self._strip_pending:
            self._strip_pending = False
            complete = _without_usage_only_chunks(complete)
        return complete

    def finish(self) -> bytes:
        """End of stream: meters an unterminated last event and returns the bytes still to relay."""
        held, self._held = self._held, b""
        self._meter(self._splitter.feed(held + b"\n\n" if self._hide else b"\n\n"))
        return held

    def _meter(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.events += 1
            if payload == b"[DONE]":
                self.done = True
                continue
            if (
                (self.response_id is None and self.events <= FIRST_EVENTS)
                or _WORTH_PARSING(payload) is not None
                or payload.startswith(b'{"error"')
            ):
                self._inspect(payload)
            if self.usage is None or self._keep:
                self._raw.append(payload)
                self._raw_size += len(payload)
                if self._raw_size > RAW_LIMIT:
                    self._fold()

    def _inspect(self, payload: bytes) -> None:
        """The rare events worth parsing now: the first ones, usage, finish reasons, errors."""
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        head = event["response"] if isinstance(event.get("response"), dict) else event
        if self.response_id is None and isinstance(head.get("id"), str) and head["id"]:
            self.response_id = head["id"]
        if isinstance(head.get("model"), str) and head["model"]:
            self.response_model = head["model"]
        usage = usage_from_response(event)
        if usage is not None:
            self.usage = usage
            if not self._keep:
                self._raw.clear()
                self._text.clear()
                self._calls.clear()
            if is_usage_only_chunk(event):
                self.saw_usage_only_chunk = True
                self._strip_pending = self._hide
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                self.finish_reasons[_index(choice)] = choice["finish_reason"]
        if isinstance(event.get("error"), dict):
            self.error = event["error"]

    # -- estimates ------------------------------------------------------------------------------------------

    def _fold(self) -> None:
        """Parse kept events into their text."""
        for payload in self._raw:
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self._absorb(event)
        self._raw.clear()
        self._raw_size = 0

    def _absorb(self, event: dict[str, Any]) -> None:
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                if isinstance(choice.get("text"), str):  # legacy completions
                    self._text.append(choice["text"])
                continue
            for key in ("reasoning_content", "reasoning", "content", "refusal"):
                if isinstance(delta.get(key), str):
                    self._text.append(delta[key])
            index = _index(choice)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    self._add_call((index, _index(call)), call)
            if isinstance(delta.get("function_call"), dict):
                self._add_call((index, "function_call"), {"function": delta["function_call"]})
        kind = event.get("type")
        if kind in ("response.output_text.delta", "response.refusal.delta") and isinstance(event.get("delta"), str):
            self._text.append(event["delta"])
        elif kind == "response.function_call_arguments.delta" and isinstance(event.get("delta"), str):
            self._calls.setdefault((0, str(event.get("item_id"))), ["", ""])[1] += event["delta"]

    def _add_call(self, key: tuple[int, int | str], call: dict[str, Any]) -> None:
        function = call.get("function")
        if isinstance(function, dict):
            parts = self._calls.setdefault(key, ["", ""])
            parts[0] += _string(function.get("name"))
            parts[1] += _string(function.get("arguments"))

    def output(self) -> Output:
        """The text and tool calls streamed so far."""
        self._fold()
        return Output("".join(self._text), tuple((name, arguments) for name, arguments in self._calls.values()))

    def final_usage(self, endpoint: str, request: Mapping[str, Any], model: str) -> Usage:
        """The reported usage, else an estimate from the request and what was streamed (also after a client
        disconnect or a broken stream: the tokens produced so far)."""
        if self.usage is not None:
            return self.usage
        return estimate_usage(endpoint, request, model, self.output())


def _index(item: dict[str, Any]) -> int:
    index = item.get("index")
    return index if isinstance(index, int) else 0


def _normalize_newlines(buffer: bytes) -> bytes:
    """CRLF and CR line ends as LF, except a trailing lone CR, which may be the first half of a CRLF."""
    if b"\r" not in buffer:
        return buffer
    held = b"\r" if buffer.endswith(b"\r") and not buffer.endswith(b"\r\r") else b""
    body = buffer[:-1] if held else buffer
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held


def _without_usage_only_chunks(events: bytes) -> bytes:
    """The same (LF-separated) events minus usage-only chunks, byte for byte otherwise (runs once per stream)."""
    kept = []
    for event in events.split(b"\n\n")[:-1]:
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if data and _HAS_USAGE(data) is not None:
            try:
                if is_usage_only_chunk(orjson.loads(data)):
                    continue
            except orjson.JSONDecodeError:
                pass
        kept.append(event + b"\n\n")
    return b"".join(kept)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
