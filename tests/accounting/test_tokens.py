"""Token estimates: offline loading, OpenAI's reported counts, and accuracy on a corpus of prompts.

The "true count" of a corpus prompt is computed independently of `gateway.accounting.tokens`: the whole prompt is
serialized to one ChatML string the way OpenAI renders it (`<|im_start|>role<|im_sep|>content<|im_end|>` per
message, tool definitions as a TypeScript namespace under `# Tools` / `## functions` in the system message, tool
calls as `assistant to=functions.NAME`, results as `functions.NAME to=assistant`, the reply primed with
`<|im_start|>assistant<|im_sep|>`) and tokenized in one pass, so tokens merge across field boundaries exactly as
they would in the real prompt. The estimator instead sums per-field counts and fixed overheads. The rendering
itself is checked against counts the OpenAI API reported (the cookbook's examples).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from gateway.accounting import tokens

CORPUS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "chat_corpus.json").read_text("utf-8"))
CORPUS_BY_ID = {prompt["id"]: prompt for prompt in CORPUS}
MODELS = ("gpt-4o-mini", "gpt-4")  # o200k_base and cl100k_base
TOLERANCE = 0.02

# "How to count tokens with tiktoken" (OpenAI cookbook): the counts the API reported for its two examples.
COOKBOOK_NAMES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain "
        "English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
        "leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
API_COUNTS_NAMES = {"gpt-3.5-turbo": 129, "gpt-4": 129, "gpt-4o": 124, "gpt-4o-mini": 124}
API_COUNTS_TOOLS = {"gpt-3.5-turbo": 105, "gpt-4": 105, "gpt-4o": 101, "gpt-4o-mini": 101}


# -- the independent reference ---------------------------------------------------------------------------------


@functools.cache
def chatml_encoding(model: str) -> tiktoken.Encoding:
    base = tokens.get_encoding("o200k_base" if model.startswith("gpt-4o") else "cl100k_base")
    top = base.max_token_value
    specials = {"<|im_start|>": top + 1, "<|im_sep|>": top + 2, "<|im_end|>": top + 3, "<|name|>": top + 4}
    return tiktoken.Encoding(
        name=f"{base.name}_chatml",
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens={**base._special_tokens, **specials},
    )


def typescript(functions: list[dict[str, Any]]) -> str:
    def fmt_type(schema: dict[str, Any], indent: int) -> str:
        if "enum" in schema:
            return " | ".join(json.dumps(value, ensure_ascii=False) for value in schema["enum"])
        if schema.get("type") == "array":
            return fmt_type(schema["items"], indent) + "[]" if "items" in schema else "any[]"
        if schema.get("type") == "object" and schema.get("properties"):
            return "{\n" + fmt_object(schema, indent + 2) + "\n}"
        return str(schema.get("type", "any"))

    def fmt_object(schema: dict[str, Any], indent: int) -> str:
        out = []
        for name, prop in schema["properties"].items():
            if prop.get("description") and indent < 2:
                out.append(f"// {prop['description']}")
            mark = "" if name in schema.get("required", []) else "?"
            out.append(f"{name}{mark}: {fmt_type(prop, indent)},")
        return "\n".join(" " * indent + line for line in out)

    text = "namespace functions {\n\n"
    for function in functions:
        if function.get("description"):
            text += f"// {function['description']}\n"
        parameters = function.get("parameters") or {}
        if parameters.get("properties"):
            text += f"type {function['name']} = (_: {{\n{fmt_object(parameters, 0)}\n}}) => any;\n\n"
        else:
            text += f"type {function['name']} = () => any;\n\n"
    return text + "} // namespace functions"


def reference_count(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, model: str) -> int:
    messages = [dict(message) for message in messages]
    if tools:
        block = "# Tools\n\n## functions\n\n" + typescript([tool["function"] for tool in tools])
        system = next((m for m in messages if m["role"] in ("system", "developer")), None)
        if system is not None:
            system["content"] = system["content"] + "\n\n" + block
        else:
            messages.insert(0, {"role": "system", "content": block})
    names = {}
    text = ""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        if message["role"] == "tool":
            name = names[message["tool_call_id"]]
            text += f"<|im_start|>functions.{name} to=assistant<|im_sep|>{content}<|im_end|>"
            continue
        if content is not None or not message.get("tool_calls"):
            header = message["role"] + (f"<|name|>{message['name']}" if "name" in message else "")
            text += f"<|im_start|>{header}<|im_sep|>{content}<|im_end|>"
        for call in message.get("tool_calls", []):
            names[call["id"]] = call["function"]["name"]
            function = call["function"]
            text += f"<|im_start|>assistant to=functions.{function['name']}<|im_sep|>{function['arguments']}<|im_end|>"
    text += "<|im_start|>assistant<|im_sep|>"
    return len(chatml_encoding(model).encode(text, allowed_special="all"))


def estimate(prompt: dict[str, Any], model: str) -> int:
    return tokens.count_chat_prompt(prompt["messages"], prompt.get("tools"), model=model)


# -- tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), API_COUNTS_NAMES.items())
def test_messages_with_names_count_what_the_api_reported(model: str, expected: int) -> None:
    assert tokens.count_chat_prompt(COOKBOOK_NAMES, model=model) == expected
    assert reference_count(COOKBOOK_NAMES, None, model) == expected


@pytest.mark.parametrize(("model", "expected"), API_COUNTS_TOOLS.items())
def test_tool_definitions_count_what_the_api_reported(model: str, expected: int) -> None:
    prompt = CORPUS_BY_ID["tools-cookbook"]
    assert estimate(prompt, model) == expected
    # The one-pass reference renders the full `# Tools` header: one token more than the API's count.
    assert abs(reference_count(prompt["messages"], prompt["tools"], model) - expected) <= 1


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 30
    assert sum(1 for prompt in CORPUS if prompt.get("tools")) >= 8
    assert sum(1 for prompt in CORPUS if any(m.get("tool_calls") for m in prompt["messages"])) >= 3
    assert sum(1 for prompt in CORPUS if len(prompt["messages"]) >= 4) >= 5
    assert sum(1 for prompt in CORPUS if any(ord(c) > 0x36F for m in prompt["messages"] for c in str(m))) >= 6


def corpus_errors(model: str) -> list[tuple[str, int, int]]:
    return [(p["id"], estimate(p, model), reference_count(p["messages"], p.get("tools"), model)) for p in CORPUS]


@pytest.mark.parametrize("model", MODELS)
def test_estimates_are_within_two_percent_of_the_true_count(model: str) -> None:
    rows = corpus_errors(model)
    for prompt_id, estimated, true in rows:
        assert abs(estimated - true) <= TOLERANCE * true, (prompt_id, estimated, true)
    total_true = sum(true for _, _, true in rows)
    total_error = sum(abs(estimated - true) for _, estimated, true in rows)
    assert total_error <= 0.01 * total_true


def test_text_counts_are_tiktokens_over_the_same_text() -> None:
    text = "Bonjour 👋 — 東京 is 12,345.67 km² away; `code()`\n\n"
    assert tokens.count_text(text, "gpt-4o") == len(tiktoken.get_encoding("o200k_base").encode(text))
    assert tokens.count_text(text, "gpt-4") == len(tiktoken.get_encoding("cl100k_base").encode(text))
    assert tokens.count_text("", "gpt-4o") == 0
    # Special-token text in user input is counted as ordinary text, never refused.
    assert tokens.count_text("<|endoftext|>", "gpt-4o") > 1


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4o-2024-08-06", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-sonnet-4-5", "cl100k_base"),
        ("smollm2", "cl100k_base"),
    ],
)
def test_encoding_by_model_family(model: str, encoding: str) -> None:
    assert tokens.encoding_name_for_model(model) == encoding


def test_other_inputs_count_strings_and_token_arrays() -> None:
    hello = tokens.count_text("hello world", "text-embedding-3-small")
    assert tokens.count_tokens_input("hello world", "text-embedding-3-small") == hello
    assert tokens.count_tokens_input(["hello world", "hello world"], "text-embedding-3-small") == 2 * hello
    assert tokens.count_tokens_input([1, 2, 3], "text-embedding-3-small") == 3
    assert tokens.count_tokens_input([[1, 2], [3]], "text-embedding-3-small") == 3
    assert tokens.count_tokens_input(None, "text-embedding-3-small") == 0


def test_odd_json_is_estimated_not_raised_on() -> None:
    odd_tools: list[Any] = [
        "not a tool",
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": "x"}}},
        {
            "type": "function",
            "function": {"name": "g", "parameters": {"properties": {"a": {"type": ["string", "null"]}}}},
        },
        {
            "type": "function",
            "function": {"name": "h", "parameters": {"properties": {"b": {"anyOf": [{"type": "integer"}]}}}},
        },
        {"type": "web_search"},
    ]
    odd_messages: list[Any] = [
        "not a message",
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
        {"role": "user", "content": 42},
        {"role": "assistant", "tool_calls": [{"id": "1", "function": None}, "bad"]},
        {"role": "tool", "tool_call_id": "unknown", "content": None},
    ]
    count = tokens.count_chat_prompt(odd_messages, odd_tools, model="gpt-4o", tool_choice={"type": "function"})
    assert count > tokens.IMAGE_TOKENS["low"]


def test_completion_counts_text_and_tool_calls() -> None:
    assert tokens.count_completion("The answer is 42.", [], "gpt-4o") == tokens.count_text(
        "The answer is 42.", "gpt-4o"
    )
    arguments = '{"location": "Paris"}'
    expected = (
        tokens.OUTPUT_TOOL_CALL_FRAMING
        + tokens.count_text("get_weather", "gpt-4o")
        + tokens.count_text(arguments, "gpt-4o")
    )
    assert tokens.count_completion("", [("get_weather", arguments)], "gpt-4o") == expected


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket, sys

    def refuse(*args, **kwargs):
        raise OSError("network disabled for this test")

    socket.socket.connect = refuse
    socket.create_connection = refuse
    sys.modules["requests"] = None  # tiktoken downloads with requests: make any download attempt fail loudly

    from gateway.accounting import tokens
    {body}
    """
)


def run_offline(body: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        **(env_extra or {}),
    }
    script = OFFLINE_SCRIPT.format(body=textwrap.dedent(body))
    root = Path(__file__).parents[2]
    return subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=60, check=False
    )


def test_encodings_load_with_no_network() -> None:
    result = run_offline(
        """
        assert tokens.count_text("hello world", "gpt-4o") == 2
        assert tokens.count_text("hello world", "gpt-4") == 2
        assert tokens.get_encoding("p50k_base").encode("hello world") == [31373, 995]
        print("offline ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "offline ok" in result.stdout


def test_a_missing_encoding_raises_instead_of_downloading() -> None:
    result = run_offline(
        """
        import importlib.util
        importlib.util.find_spec = lambda name, *a: None  # as if litellm were not installed
        try:
            tokens.count_text("hello", "gpt-4o")
        except tokens.TokenizerUnavailable as exc:
            print("unavailable:", exc)
        """,
        {"TIKTOKEN_CACHE_DIR": "/nonexistent-cache"},
    )
    assert result.returncode == 0, result.stderr
    assert "unavailable: No local copy of the o200k_base encoding" in result.stdout
