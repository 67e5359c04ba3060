"""Usage: what a response consumed, as the provider reported it or, failing that, as tiktoken counts it.

`usage_from_response` reads a JSON body (chat, completions, embeddings, Responses API); `estimate_usage` counts
a request and its output when the provider reported nothing. Streams are metered by `stream.StreamMeter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.accounting import tokens

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


STREAMS_WITH_USAGE_OPTION = frozenset({"chat/completions", "completions"})


def ask_for_usage(endpoint: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The upstream body of a streamed request, asking for usage (`stream_options.include_usage`), and whether the
    client asked for it itself (if not, relay with `StreamMeter(hide_usage_chunk=True)`).

    Bodies that are not such streams come back unchanged (as a copy) with True: nothing is to be hidden.
    """
    if endpoint not in STREAMS_WITH_USAGE_OPTION or body.get("stream") is not True:
        return dict(body), True
    options = body.get("stream_options")
    options = options if isinstance(options, Mapping) else {}
    if options.get("include_usage") is True:
        return dict(body), True
    return {**body, "stream_options": {**options, "include_usage": True}}, False


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
