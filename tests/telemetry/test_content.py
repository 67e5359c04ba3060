"""Content capture shapes, PII redaction and the size cap."""

from __future__ import annotations

import orjson
import pytest

from gateway.accounting.usage import Output
from gateway.telemetry import attributes as attr
from gateway.telemetry.content import CaptureRule, capture_rule, content_attributes, encode
from gateway.telemetry.redaction import redact

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris? Mail me at ada@example.com"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"},
    ],
}


def test_messages_take_the_semconv_shape() -> None:
    rule = CaptureRule(redact_pii=False)
    captured = content_attributes(rule, REQUEST, Output("It rains.", ()), ["stop"])

    assert orjson.loads(captured[attr.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "You are terse."}]
    assert orjson.loads(captured[attr.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris? Mail me at ada@example.com"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "Paris"}}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy"}]},
    ]
    assert orjson.loads(captured[attr.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "It rains."}], "finish_reason": "stop"}
    ]


def test_redaction_is_on_by_default() -> None:
    captured = content_attributes(CaptureRule(), REQUEST, None, [])
    assert "ada@example.com" not in captured[attr.GEN_AI_INPUT_MESSAGES]
    assert "[EMAIL]" in captured[attr.GEN_AI_INPUT_MESSAGES]
    assert attr.GEN_AI_OUTPUT_MESSAGES not in captured


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("not a card 4111 1111 1111 1112", "not a card 4111 1111 1111 1112"),
        ("call +44 20 7946 0958 now", "call [PHONE] now"),
        ("call (415) 555-2671", "call [PHONE]"),
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("host 10.0.12.7 is up", "host [IP] is up"),
        ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]"),
        ("in 2024 we sold 300 units", "in 2024 we sold 300 units"),
    ],
)
def test_redact_removes_pii_by_shape_and_leaves_ordinary_numbers(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_encoded_content_stays_valid_json_under_the_cap() -> None:
    rule = CaptureRule(redact_pii=False, max_bytes=512)
    messages = [{"role": "user", "parts": [{"type": "text", "content": "word " * 2000}]}] * 5
    encoded = encode(messages, rule)
    assert len(encoded.encode()) <= 512
    decoded = orjson.loads(encoded)
    assert decoded[0]["parts"][0]["content"].endswith("…[truncated]")


def test_first_matching_rule_wins_and_no_rule_means_no_capture() -> None:
    rules = (CaptureRule(teams=("research",), models=("gpt-*",), max_bytes=1000), CaptureRule(teams=("ops",)))
    assert capture_rule(rules, "research", "gpt-4o") is rules[0]
    assert capture_rule(rules, "research", "claude-3") is None
    assert capture_rule(rules, "ops", "anything") is rules[1]
    assert capture_rule(rules, "sales", "gpt-4o") is None
    assert capture_rule((), "research", "gpt-4o") is None
