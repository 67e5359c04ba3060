"""Prompt and response content on spans, in the GenAI conventions' JSON shape, only where a policy opts in.

    gen_ai.system_instructions  [{"type": "text", "content": ...}]
    gen_ai.input.messages       [{"role": ..., "parts": [{"type": "text"|"tool_call"|"tool_call_response", ...}]}]
    gen_ai.output.messages      [{"role": "assistant", "parts": [...], "finish_reason": ...}]

Each attribute is capped at the rule's `max_bytes` by shortening text parts, so it stays valid JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.accounting.usage import Output
from gateway.routing import alias_allowed
from gateway.telemetry import attributes as attr
from gateway.telemetry.redaction import redact

TRUNCATED = "…[truncated]"
# Fields that give the JSON its meaning: never cut or redacted, only text is.
_STRUCTURAL = frozenset({"type", "role", "id", "name", "finish_reason"})


@dataclass(frozen=True, slots=True)
class CaptureRule:
    # None: every team / every alias.
    teams: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    redact_pii: bool = True
    max_bytes: int = 16_384

    def matches(self, team: str, alias: str) -> bool:
        return (self.teams is None or team in self.teams) and alias_allowed(alias, self.models)


def capture_rule(rules: Sequence[CaptureRule], team: str, alias: str) -> CaptureRule | None:
    """The first rule that covers this team and alias; None (no capture) by default."""
    for rule in rules:
        if rule.matches(team, alias):
            return rule
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def input_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system instructions, the other messages) in the conventions' shape."""
    system: list[dict[str, Any]] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = str(message.get("role", ""))
        text = _text(message.get("content"))
        if role in ("system", "developer"):
            system.append({"type": "text", "content": text})
            continue
        parts: list[dict[str, Any]] = []
        if role == "tool":
            parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"), "response": text})
        elif text:
            parts.append({"type": "text", "content": text})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": _arguments(function.get("arguments")),
                }
            )
        converted.append({"role": role, "parts": parts})
    return system, converted


def output_messages(output: Output, finish_reasons: Sequence[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if output.text:
        parts.append({"type": "text", "content": output.text})
    for name, arguments in output.tool_calls:
        parts.append({"type": "tool_call", "name": name, "arguments": _arguments(arguments)})
    return [{"role": "assistant", "parts": parts, "finish_reason": finish_reasons[0] if finish_reasons else "stop"}]


def _shrink(value: Any, budget: list[int], clean: Callable[[str], str]) -> Any:
    """Walks the structure, cleaning strings and cutting them once the byte budget is spent."""
    if isinstance(value, str):
        text = clean(value)
        encoded = text.encode()
        if len(encoded) <= budget[0]:
            budget[0] -= len(encoded)
            return text
        kept = encoded[: max(budget[0], 0)].decode("utf-8", "ignore")
        budget[0] = 0
        return kept + TRUNCATED
    if isinstance(value, list):
        return [_shrink(item, budget, clean) for item in value]
    if isinstance(value, dict):
        return {key: _shrink(item, budget, clean) if key not in _STRUCTURAL else item for key, item in value.items()}
    return value


def encode(value: Any, rule: CaptureRule) -> str:
    clean: Callable[[str], str] = redact if rule.redact_pii else (lambda text: text)
    cleaned = _shrink(value, [sys.maxsize], clean)
    encoded = orjson.dumps(cleaned)
    budget = rule.max_bytes
    # JSON framing takes room too: shrink the text budget until the whole attribute fits.
    while len(encoded) > rule.max_bytes and budget > 16:
        budget = min(budget - (len(encoded) - rule.max_bytes), budget * 3 // 4)
        encoded = orjson.dumps(_shrink(cleaned, [max(budget, 0)], lambda text: text))
    return encoded.decode()


def content_attributes(
    rule: CaptureRule, request: Mapping[str, Any], output: Output | None, finish_reasons: Sequence[str]
) -> dict[str, str]:
    attributes: dict[str, str] = {}
    messages = request.get("messages")
    if isinstance(messages, list):
        system, converted = input_messages([m for m in messages if isinstance(m, Mapping)])
        if system:
            attributes[attr.GEN_AI_SYSTEM_INSTRUCTIONS] = encode(system, rule)
        attributes[attr.GEN_AI_INPUT_MESSAGES] = encode(converted, rule)
    elif isinstance(request.get("prompt"), str):
        attributes[attr.GEN_AI_INPUT_MESSAGES] = encode(
            [{"role": "user", "parts": [{"type": "text", "content": request["prompt"]}]}], rule
        )
    if output is not None:
        attributes[attr.GEN_AI_OUTPUT_MESSAGES] = encode(output_messages(output, finish_reasons), rule)
    return attributes
