"""Request validation: just enough to route and meter, naming the offending field.

The gateway checks what it relies on (model, stream, messages, n, ...) and leaves the rest to the upstream,
which knows its own parameters better than we do.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.exceptions import InvalidRequest

# The namespaced field a client may add for Tollgate (evaluation context, tags); never sent upstream.
EXTENSION_FIELD = "tollgate"


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return value


def _optional_positive_int(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequest(f"'{name}' must be an integer >= 1.", param=name)


def _check_stream_options(body: dict[str, Any], stream: bool) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    if not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")


def _check_extension(body: dict[str, Any]) -> None:
    extension = body.get(EXTENSION_FIELD)
    if extension is not None and not isinstance(extension, dict):
        raise InvalidRequest(f"'{EXTENSION_FIELD}' must be an object.", param=EXTENSION_FIELD)


def validate_chat(body: dict[str, Any]) -> tuple[str, bool]:
    """Returns (model, stream) of a chat completion request."""
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "you must provide a messages parameter", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{index}]' must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(
                f"'messages[{index}].role' is required and must be a string.", param=f"messages[{index}].role"
            )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    stream = _optional_bool(body, "stream")
    _optional_positive_int(body, "n")
    _optional_positive_int(body, "max_tokens")
    _optional_positive_int(body, "max_completion_tokens")
    _check_stream_options(body, stream)
    _check_extension(body)
    return model, stream


def validate_completion(body: dict[str, Any]) -> tuple[str, bool]:
    model = _require_model(body)
    if "prompt" not in body:
        raise InvalidRequest("you must provide a prompt parameter", param="prompt", code="missing_required_parameter")
    stream = _optional_bool(body, "stream")
    _optional_positive_int(body, "n")
    _optional_positive_int(body, "max_tokens")
    _check_stream_options(body, stream)
    _check_extension(body)
    return model, stream


def validate_embeddings(body: dict[str, Any]) -> tuple[str, bool]:
    model = _require_model(body)
    value = body.get("input")
    if value is None:
        raise InvalidRequest("you must provide an input parameter", param="input", code="missing_required_parameter")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    _check_extension(body)
    return model, False


def validate_responses(body: dict[str, Any]) -> tuple[str, bool]:
    model = _require_model(body)
    if "input" not in body and "previous_response_id" not in body and "prompt" not in body:
        raise InvalidRequest("you must provide an input parameter", param="input", code="missing_required_parameter")
    stream = _optional_bool(body, "stream")
    _check_extension(body)
    return model, stream
