"""Usage: what a response consumed, as the provider reported it or, failing that, as tiktoken counts it.

`usage_from_response` reads a JSON body (chat, completions, embeddings, Responses API). `StreamMeter` watches a
relayed SSE stream for the same facts at a few bytes' search per event (DESIGN.md §7: events are the unit of
streaming cost): it parses JSON only for events that carry a usage or finish reason value and for the first
events until the response id is known; the events' text is kept as bytes and parsed only if an estimate is
needed (the provider reported no usage) — or, for long streams, in batches that bound memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.accounting import tokens
from gateway.protocol.sse import EventSplitter

UsageSource = Literal["reported", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response. Cached tokens are part of input, reasoning tokens part of output."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "reported"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _detail(usage: Mapping[str, Any], details: str, key: str) -> int:
    section = usage.get(details)
    return (_count(section.get(key)) or 0) if isinstance(section, Mapping) else 0


def parse_usage(usage: Any) -> Usage | None:
    """A `usage` object in any OpenAI shape (Chat Completions/Completions/Embeddings or Responses API)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    if prompt is not None:
        return Usage(
            input_tokens=prompt,
            cached_input_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
            output_tokens=_count(usage.get("completion_tokens")) or 0,
            reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    input_tokens = _count(usage.get("input_tokens"))
    if input_tokens is not None:
        cached = _detail(usage, "input_tokens_details", "cached_tokens")
        if "cache_read_input_tokens" in usage:
            # Anthropic's shape: input_tokens counts only the uncached, unwritten part.
            cached = _count(usage.get("cache_read_input_tokens")) or 0
            input_tokens += cached + (_count(usage.get("cache_creation_input_tokens")) or 0)
        return Usage(
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=_count(usage.get("output_tokens")) or 0,
            reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
        )
    return None


def usage_from_response(body: Any) -> Usage | None:
    """The reported usage of a response body, a stream chunk, or a Responses API event wrapping a response."""
    if not isinstance(body, Mapping):
        return None
    usage = parse_usage(body.get("usage"))
    if usage is None and isinstance(body.get("response"), Mapping):
        usage = parse_usage(body["response"].get("usage"))
    return usage


def is_usage_only_chunk(chunk: Any) -> bool:
    """The chunk `stream_options.include_usage` adds: no choices, just usage. Clients that did not ask must not
    see it (the gateway asks upstream for usage on every chat stream)."""
    return isinstance(chunk, Mapping) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), Mapping)


# -- estimates ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """What a response said, for estimating its output tokens: text (content, refusals, visible reasoning) and
    tool calls as (name, arguments)."""

    text: str = ""
    tool_calls: tuple[tuple[str, str], ...] = ()


def output_from_response(body: Any) -> Output:
    """The generated text of a chat/completions/Responses API body (embeddings have none)."""
    if not isinstance(body, Mapping):
        return Output()
    text: list[str] = []
    calls: list[tuple[str, str]] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message")
        if isinstance(message, Mapping):
            _absorb_message(message, text, calls)
        elif isinstance(choice.get("text"), str):
            text.append(choice["text"])
    output = body.get("output")
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "function_call":
            calls.append((_string(item.get("name")), _string(item.get("arguments"))))
        parts = item.get("content")
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, Mapping):
                text.append(_string(part.get("text")) or _string(part.get("refusal")))
    return Output("".join(text), tuple(calls))


def _absorb_message(message: Mapping[str, Any], text: list[str], calls: list[tuple[str, str]]) -> None:
    for key in ("reasoning_content", "reasoning", "content", "refusal"):
        if isinstance(message.get(key), str):
            text.append(message[key])
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            calls.append((_string(function.get("name")), _string(function.get("arguments"))))
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        calls.append((_string(legacy.get("name")), _string(legacy.get("arguments"))))


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def estimate_prompt_tokens(endpoint: str, request: Mapping[str, Any], model: str) -> int:
    """Input tokens of a request by endpoint ("chat/completions", "completions", "embeddings", "responses")."""
    if endpoint == "chat/completions":
        messages = request.get("messages")
        return tokens.count_chat_prompt(
            messages if isinstance(messages, list) else [],
            request.get("tools") or request.get("functions"),
            model=model,
            tool_choice=request.get("tool_choice", request.get("function_call")),
            response_format=request.get("response_format"),
        )
    if endpoint == "completions":
        return tokens.count_tokens_input(request.get("prompt"), model)
    if endpoint == "embeddings":
        return tokens.count_tokens_input(request.get("input"), model)
    if endpoint == "responses":
        return tokens.count_chat_prompt(
            _responses_messages(request), request.get("tools"), model=model, tool_choice=request.get("tool_choice")
        )
    return 0


def _responses_messages(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A Responses API input as chat messages, which OpenAI renders the same way."""
    messages: list[Mapping[str, Any]] = []
    if isinstance(request.get("instructions"), str):
        messages.append({"role": "developer", "content": request["instructions"]})
    items = request.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
        elif "role" in item:
            messages.append(item)
    return messages


def estimate_usage(endpoint: str, request: Mapping[str, Any], model: str, output: Output) -> Usage:
    """Usage counted with tiktoken, for a response whose provider reported none (blocking CPU: ~1 µs per token)."""
    return Usage(
        input_tokens=estimate_prompt_tokens(endpoint, request, model),
        output_tokens=tokens.count_completion(output.text, output.tool_calls, model)
        if output.text or output.tool_calls
        else 0,
        source="estimated",
    )


# -- streams --------------------------------------------------------------------------------------------------

_USAGE_KEY = b'"usage"'
_FINISH_KEY = b'"finish_reason"'
_BLANKS = b" \t\r\n"
# Event bytes kept for an estimate before they are folded into text, bounding a long stream's memory.
RAW_LIMIT = 256 * 1024
# Events parsed up front until one carries the response id (Azure opens with an id-less content-filter event).
FIRST_EVENTS = 3


def _has_value(payload: bytes, key: bytes) -> bool:
    """Whether `"key"` appears with a value other than null. Inside a JSON string a quote is escaped, so a match
    is a real key; a false positive would only cost a parse."""
    start = payload.find(key)
    while start != -1:
        at = start + len(key)
        tail = payload[at : at + 24].lstrip(_BLANKS)
        if tail[:1] == b":" and not tail[1:].lstrip(_BLANKS).startswith(b"null"):
            return True
        start = payload.find(key, at)
    return False


class StreamMeter:
    """Meters one relayed SSE stream: feed it every chunk as it is relayed, and relay what `feed` returns.

    With `hide_usage_chunk` (the client did not ask for usage but the gateway did), `feed` holds back a trailing
    partial event and returns the complete events received so far minus the usage-only chunk (line ends
    normalized to LF); otherwise it returns the chunk unchanged. Call `finish` at the end of the stream and relay what it returns (the held-back tail, if any).
    """

    __slots__ = (
        "_calls",
        "_hide",
        "_held",
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

    def __init__(self, *, hide_usage_chunk: bool = False) -> None:
        self._hide = hide_usage_chunk
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
                or _has_value(payload, _USAGE_KEY)
                or _has_value(payload, _FINISH_KEY)
                or payload.startswith(b'{"error"')
            ):
                self._inspect(payload)
            if self.usage is None:
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
            self._raw.clear()
            self._text.clear()
            self._calls.clear()
            if is_usage_only_chunk(event):
                self.saw_usage_only_chunk = True
                self._strip_pending = self._hide
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                index = choice.get("index")
                self.finish_reasons[index if isinstance(index, int) else 0] = choice["finish_reason"]
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
            index = choice.get("index") if isinstance(choice.get("index"), int) else 0
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    self._add_call((index, call.get("index") if isinstance(call.get("index"), int) else 0), call)
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
        if data and _has_value(data, _USAGE_KEY):
            try:
                if is_usage_only_chunk(orjson.loads(data)):
                    continue
            except orjson.JSONDecodeError:
                pass
        kept.append(event + b"\n\n")
    return b"".join(kept)
