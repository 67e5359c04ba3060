from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gateway.exceptions import InvalidRequest
from gateway.protocol.validation import (
    parse_json_object,
    validate_chat,
    validate_completion,
    validate_embeddings,
    validate_responses,
)

Validator = Callable[[dict[str, Any]], tuple[str, bool]]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", **fields}


def embeddings(**fields: Any) -> dict[str, Any]:
    return {"model": "text-embedding-3-small", "input": "hello", **fields}


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def rejected(validator: Validator, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validator(body)
    error = caught.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error


# --- parse_json_object ---------------------------------------------------------------------------------------


def test_parse_json_object_returns_the_object() -> None:
    assert parse_json_object(b'{"model": "m", "x": [1, 2]}') == {"model": "m", "x": [1, 2]}


def test_an_empty_body_is_rejected_with_a_message_saying_so() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        parse_json_object(b"")


@pytest.mark.parametrize("body", [b"{", b'{"model": }', b"not json", b"\xff\xfe"])
def test_malformed_json_is_rejected_with_a_message_saying_so(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_json_object(body)


@pytest.mark.parametrize("body", [b"[]", b'"model"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        parse_json_object(body)


# --- errors shared by every validator -------------------------------------------------------------------------

ALL_VALIDATORS = [
    pytest.param(validate_chat, chat(), id="chat"),
    pytest.param(validate_completion, completion(), id="completion"),
    pytest.param(validate_embeddings, embeddings(), id="embeddings"),
    pytest.param(validate_responses, {"model": "gpt-4o", "input": "hi"}, id="responses"),
]


@pytest.mark.parametrize(("validator", "body"), ALL_VALIDATORS)
def test_a_missing_model_is_rejected_naming_model(validator: Validator, body: dict[str, Any]) -> None:
    error = rejected(validator, without(body, "model"))

    assert error.param == "model"
    assert error.code == "missing_required_parameter"


@pytest.mark.parametrize("model", [42, "", ["gpt-4o"], {"name": "gpt-4o"}, True])
@pytest.mark.parametrize(("validator", "body"), ALL_VALIDATORS)
def test_a_model_that_is_not_a_non_empty_string_is_rejected(
    validator: Validator, body: dict[str, Any], model: Any
) -> None:
    assert rejected(validator, {**body, "model": model}).param == "model"


@pytest.mark.parametrize("extension", ["tag", 1, ["a"], True])
@pytest.mark.parametrize(("validator", "body"), ALL_VALIDATORS)
def test_a_tollgate_field_that_is_not_an_object_is_rejected(
    validator: Validator, body: dict[str, Any], extension: Any
) -> None:
    assert rejected(validator, {**body, "tollgate": extension}).param == "tollgate"


@pytest.mark.parametrize(("validator", "body"), ALL_VALIDATORS)
def test_valid_requests_leave_unknown_fields_untouched(validator: Validator, body: dict[str, Any]) -> None:
    body = {
        **body,
        "tollgate": {"tags": ["a"]},
        "vendor_extension": {"nested": [1, 2.5, None]},
        "seed": 7,
        "logit_bias": {"50256": -100},
    }
    before = copy.deepcopy(body)

    validator(body)

    assert body == before


# --- chat completions -----------------------------------------------------------------------------------------


def test_a_valid_chat_request_returns_model_and_stream_false_by_default() -> None:
    assert validate_chat(chat()) == ("gpt-4o-mini", False)


def test_a_streaming_chat_request_returns_stream_true() -> None:
    assert validate_chat(chat(stream=True, stream_options={"include_usage": True})) == ("gpt-4o-mini", True)


def test_stream_null_counts_as_not_streaming() -> None:
    assert validate_chat(chat(stream=None)) == ("gpt-4o-mini", False)


def test_missing_messages_are_rejected_naming_messages() -> None:
    error = rejected(validate_chat, without(chat(), "messages"))

    assert error.param == "messages"
    assert error.code == "missing_required_parameter"


@pytest.mark.parametrize("messages", [[], "hello", {"role": "user"}])
def test_messages_that_are_not_a_non_empty_array_are_rejected(messages: Any) -> None:
    assert rejected(validate_chat, chat(messages=messages)).param == "messages"


def test_a_message_without_role_is_rejected_naming_its_index() -> None:
    body = chat(messages=[{"role": "system", "content": "be brief"}, {"content": "hi"}])

    assert rejected(validate_chat, body).param == "messages[1].role"


@pytest.mark.parametrize("role", ["", 3, None])
def test_a_message_with_an_invalid_role_is_rejected(role: Any) -> None:
    assert rejected(validate_chat, chat(messages=[{"role": role, "content": "hi"}])).param == "messages[0].role"


def test_a_message_that_is_not_an_object_is_rejected_naming_its_index() -> None:
    assert rejected(validate_chat, chat(messages=[{"role": "user", "content": "a"}, "b"])).param == "messages[1]"


@pytest.mark.parametrize("stream", ["true", 1, 0, "yes"])
def test_stream_that_is_not_a_boolean_is_rejected(stream: Any) -> None:
    assert rejected(validate_chat, chat(stream=stream)).param == "stream"


@pytest.mark.parametrize("field", ["n", "max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_counts_below_one_or_not_integers_are_rejected(field: str, value: Any) -> None:
    assert rejected(validate_chat, chat(**{field: value})).param == field


def test_n_of_one_or_more_is_accepted() -> None:
    assert validate_chat(chat(n=3, max_tokens=1)) == ("gpt-4o-mini", False)


@pytest.mark.parametrize("stream", [False, None])
def test_stream_options_without_stream_are_rejected(stream: Any) -> None:
    body = chat(stream_options={"include_usage": True})
    if stream is not None:
        body["stream"] = stream

    assert rejected(validate_chat, body).param == "stream_options"


def test_stream_options_that_are_not_an_object_are_rejected() -> None:
    assert rejected(validate_chat, chat(stream=True, stream_options=True)).param == "stream_options"


def test_include_usage_that_is_not_a_boolean_is_rejected() -> None:
    body = chat(stream=True, stream_options={"include_usage": "yes"})

    assert rejected(validate_chat, body).param == "stream_options.include_usage"


def test_tools_that_are_not_an_array_are_rejected() -> None:
    assert rejected(validate_chat, chat(tools={"type": "function"})).param == "tools"


# --- completions ----------------------------------------------------------------------------------------------


def test_a_valid_completion_request_returns_model_and_stream() -> None:
    assert validate_completion(completion()) == ("gpt-3.5-turbo-instruct", False)
    assert validate_completion(completion(stream=True)) == ("gpt-3.5-turbo-instruct", True)


def test_a_completion_without_prompt_is_rejected_naming_prompt() -> None:
    error = rejected(validate_completion, without(completion(), "prompt"))

    assert error.param == "prompt"
    assert error.code == "missing_required_parameter"


def test_completion_stream_options_without_stream_are_rejected() -> None:
    assert rejected(validate_completion, completion(stream_options={"include_usage": True})).param == "stream_options"


def test_completion_n_of_zero_is_rejected() -> None:
    assert rejected(validate_completion, completion(n=0)).param == "n"


def test_completion_stream_that_is_not_a_boolean_is_rejected() -> None:
    assert rejected(validate_completion, completion(stream="true")).param == "stream"


# --- embeddings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_valid_embeddings_requests_never_stream(value: Any) -> None:
    assert validate_embeddings(embeddings(input=value)) == ("text-embedding-3-small", False)


def test_embeddings_without_input_are_rejected_naming_input() -> None:
    error = rejected(validate_embeddings, without(embeddings(), "input"))

    assert error.param == "input"
    assert error.code == "missing_required_parameter"


@pytest.mark.parametrize("value", [[], 42, {"text": "a"}])
def test_embeddings_input_that_is_empty_or_not_text_is_rejected(value: Any) -> None:
    assert rejected(validate_embeddings, embeddings(input=value)).param == "input"


# --- responses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["input", "previous_response_id", "prompt"])
def test_a_responses_request_needs_one_of_input_previous_response_or_prompt(field: str) -> None:
    assert validate_responses({"model": "gpt-4o", field: "x", "stream": True}) == ("gpt-4o", True)


def test_a_responses_request_with_none_of_them_is_rejected_naming_input() -> None:
    assert rejected(validate_responses, {"model": "gpt-4o"}).param == "input"
