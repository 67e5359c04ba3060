"""Token counts for when a provider reports none: tiktoken, offline, following OpenAI's counting rules.

Encodings never download at run time. tiktoken caches an encoding under `sha1(url)` in `TIKTOKEN_CACHE_DIR`, and
litellm ships cl100k_base, o200k_base and p50k_base laid out exactly that way (hash-checked by tiktoken on load),
so on first use `TIKTOKEN_CACHE_DIR` points there unless it already holds the file. Missing files raise
`TokenizerUnavailable` instead of letting tiktoken reach the network.

Chat prompts are counted as OpenAI bills them: each message costs 3 tokens of framing (`<|im_start|>`, the
separator, `<|im_end|>`) plus its role and content, a name 1 more, and every reply is primed with 3
(`<|start|>assistant<|message|>`): the cookbook's "How to count tokens with tiktoken", which reproduces the API's
counts (129 cl100k / 124 o200k tokens on its example). Tool definitions are rendered the way the model sees them,
as a TypeScript `namespace functions` inside the system message (9 tokens of framing, 4 fewer when a system
message exists): with these rules the cookbook's tool example gives the API's 105 / 101 tokens. Tool calls and
results are counted as OpenAI's published chat format for gpt-oss renders them (`assistant to=functions.NAME`,
`functions.NAME to=assistant`); that part is a reconstruction, not checked against API-reported counts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import tiktoken

ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
DEFAULT_ENCODING = "cl100k_base"
# gpt-4o and later families (reasoning models, gpt-4.1/4.5/5, gpt-oss) use o200k_base; older ones cl100k_base.
_O200K_MODELS = re.compile(
    r"(?:chatgpt-4o|gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|gpt-realtime|gpt-audio|o[1-9]|codex|computer-use)"
    r"(?:$|[-.:_@ ])"
)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
TOOLS_FRAMING = 9
# Tool definitions join the first system message when there is one instead of opening their own.
TOOLS_IN_SYSTEM_MESSAGE = -4
# A tool call is its own message, `<|im_start|>assistant to=functions.NAME<|im_sep|>ARGUMENTS<|im_end|>`, and a
# result `<|im_start|>functions.NAME to=assistant<|im_sep|>CONTENT<|im_end|>`: 3 special tokens plus the header,
# counted as one string because "functions." merges with the name's first letters.
TOOL_CALL_HEADER = "assistant to=functions.{name}"
TOOL_RESULT_HEADER = "functions.{name} to=assistant"
# What a model writes around a call's name and arguments (" to=functions.NAME <|constrain|>json<|message|>...").
OUTPUT_TOOL_CALL_FRAMING = 5
# Images cannot be sized without decoding them: a low-detail image costs 85 tokens on gpt-4o, a 1024×1024
# high-detail one 765. A rough figure, only used when the provider reports no usage at all.
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}


class TokenizerUnavailable(RuntimeError):
    """No local copy of an encoding: reinstall litellm (a tollgate dependency) or set TIKTOKEN_CACHE_DIR."""


def cache_file_name(encoding: str) -> str:
    """The file name tiktoken caches an encoding under: the SHA-1 of its download URL."""
    return hashlib.sha1(ENCODING_URL.format(name=encoding).encode()).hexdigest()


def bundled_tokenizer_dir() -> Path | None:
    """litellm's bundled tiktoken cache, located without importing litellm (~3 s)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "litellm_core_utils" / "tokenizers"
        if candidate.is_dir():
            return candidate
    return None


def _use_local_files(encoding: str) -> None:
    file_name = cache_file_name(encoding)
    current = os.environ.get("TIKTOKEN_CACHE_DIR")
    if current and (Path(current) / file_name).is_file():
        return
    bundled = bundled_tokenizer_dir()
    if bundled is None or not (bundled / file_name).is_file():
        raise TokenizerUnavailable(
            f"No local copy of the {encoding} encoding (file {file_name}) and downloads are disabled: "
            "install litellm (pip install litellm) or set TIKTOKEN_CACHE_DIR to a directory holding it."
        )
    os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)


_load_lock = threading.Lock()


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """An encoding by name, loaded once from local files (first use takes ~0.1-0.5 s: warm up at startup)."""
    with _load_lock:
        _use_local_files(name)
        return tiktoken.get_encoding(name)


def encoding_name_for_model(model: str) -> str:
    name = model.rsplit("/", 1)[-1].lower()
    if _O200K_MODELS.match(name):
        return "o200k_base"
    return DEFAULT_ENCODING


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_text(text: str, model: str) -> int:
    return len(encoding_for_model(model).encode_ordinary(text)) if text else 0


def count_tokens_input(value: Any, model: str) -> int:
    """An embeddings `input` or completions `prompt`: a string, strings, token ids or lists of token ids."""
    if isinstance(value, str):
        return count_text(value, model)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += count_text(item, model)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total


# -- chat prompts ---------------------------------------------------------------------------------------------


def count_chat_prompt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    model: str = "gpt-4o",
    tool_choice: Any = None,
    response_format: Any = None,
) -> int:
    """Prompt tokens of a chat request, as OpenAI counts them (see the module docstring).

    Total over any JSON: fields of unexpected types are skipped, never raised on.
    """
    encoding = encoding_for_model(model)

    def count(text: Any) -> int:
        return len(encoding.encode_ordinary(text)) if isinstance(text, str) and text else 0

    functions = _function_definitions(tools)
    tool_names: dict[str, str] = {}
    has_system = False
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        has_system = has_system or role in ("system", "developer")
        if role == "tool":
            name = tool_names.get(str(message.get("tool_call_id")), "")
            header = count(TOOL_RESULT_HEADER.format(name=name))
            total += TOKENS_PER_MESSAGE + header + _content_tokens(message.get("content"), count)
            continue
        content = _content_tokens(message.get("content"), count)
        calls = _tool_calls(message)
        if content or not calls:
            total += TOKENS_PER_MESSAGE + count(role) + content
            if isinstance(message.get("name"), str):
                total += count(message["name"]) + TOKENS_PER_NAME
        for call_id, name, arguments in calls:
            tool_names[call_id] = name
            total += TOKENS_PER_MESSAGE + count(TOOL_CALL_HEADER.format(name=name)) + count(arguments)
    if functions:
        total += count(render_functions(functions)) + TOOLS_FRAMING
        if has_system:
            total += TOOLS_IN_SYSTEM_MESSAGE
        if tool_choice == "none":
            total += 1
        elif isinstance(tool_choice, Mapping):
            chosen = tool_choice.get("function")
            total += count(chosen.get("name") if isinstance(chosen, Mapping) else tool_choice.get("name")) + 4
    if isinstance(response_format, Mapping) and isinstance(response_format.get("json_schema"), Mapping):
        # Structured outputs put the schema in the prompt too; its exact rendering is not public.
        total += count(orjson.dumps(response_format["json_schema"]).decode())
    return total


def _content_tokens(content: Any, count: Callable[[Any], int]) -> int:
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            total += count(part.get("text"))
        elif kind == "refusal":
            total += count(part.get("refusal"))
        elif kind in ("image_url", "input_image"):
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, Mapping) else part.get("detail")
            total += IMAGE_TOKENS.get(detail if isinstance(detail, str) else "auto", IMAGE_TOKENS["auto"])
    return total


def _tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of an assistant message's tool calls (or legacy function_call)."""
    calls = []
    raw_calls = message.get("tool_calls")
    if isinstance(raw_calls, list):
        for call in raw_calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                calls.append((str(call.get("id")), _string(function.get("name")), _string(function.get("arguments"))))
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        calls.append(("", _string(legacy.get("name")), _string(legacy.get("arguments"))))
    return calls


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _function_definitions(tools: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """Function definitions from chat `tools` ({"type": "function", "function": {...}}), legacy `functions`
    ({...}) or Responses API tools ({"type": "function", "name": ...})."""
    if not tools:
        return []
    functions = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        if isinstance(function, Mapping):
            functions.append(function)
        elif isinstance(tool.get("name"), str):
            functions.append(tool)
    return functions


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """Function definitions as the model sees them: a TypeScript namespace."""
    lines = ["namespace functions {", ""]
    for function in functions:
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.append(f"// {description}")
        name = _string(function.get("name"))
        parameters = function.get("parameters")
        if (
            isinstance(parameters, Mapping)
            and isinstance(parameters.get("properties"), Mapping)
            and parameters["properties"]
        ):
            lines.append(f"type {name} = (_: {{")
            lines.append(_render_properties(parameters, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _render_properties(schema: Mapping[str, Any], indent: int) -> str:
    properties = schema.get("properties")
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    lines = []
    for name, prop in properties.items() if isinstance(properties, Mapping) else ():
        prop = prop if isinstance(prop, Mapping) else {}
        description = prop.get("description")
        if isinstance(description, str) and description and indent < 2:
            lines.append(f"// {description}")
        optional = "" if name in required else "?"
        lines.append(f"{name}{optional}: {_render_type(prop, indent)},")
    return "\n".join(" " * indent + line for line in lines)


def _render_type(schema: Mapping[str, Any], indent: int) -> str:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return " | ".join(orjson.dumps(value).decode() for value in enum)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_render_type({**schema, "type": item}, indent) for item in kind)
    if kind == "array":
        items = schema.get("items")
        return f"{_render_type(items, indent)}[]" if isinstance(items, Mapping) else "any[]"
    if kind == "object":
        if isinstance(schema.get("properties"), Mapping) and schema["properties"]:
            return "{\n" + _render_properties(schema, indent + 2) + "\n}"
        return "object"
    for union in ("anyOf", "oneOf"):
        variants = schema.get(union)
        if isinstance(variants, list) and variants:
            return " | ".join(_render_type(v if isinstance(v, Mapping) else {}, indent) for v in variants)
    return kind if isinstance(kind, str) else "any"


# -- completions ----------------------------------------------------------------------------------------------


def count_completion(text: str, tool_calls: Iterable[tuple[str, str]], model: str) -> int:
    """Output tokens of a reply: its text (content, refusal, visible reasoning) and tool calls (name, arguments)."""
    encoding = encoding_for_model(model)
    total = len(encoding.encode_ordinary(text)) if text else 0
    for name, arguments in tool_calls:
        total += (
            OUTPUT_TOOL_CALL_FRAMING + len(encoding.encode_ordinary(name)) + len(encoding.encode_ordinary(arguments))
        )
    return total
