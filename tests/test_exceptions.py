from __future__ import annotations

import inspect

import orjson
import pytest

from gateway import exceptions
from gateway.exceptions import (
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    ServiceUnavailable,
    TollgateError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
    render_error,
)

# class, status, OpenAI type, default code: the table in exceptions.py's docstring.
FIXED_STATUS = [
    (TollgateError, 500, "api_error", None),
    (InvalidRequest, 400, "invalid_request_error", None),
    (RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
    (AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "forbidden"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (UpstreamUnavailable, 502, "api_error", "upstream_unreachable"),
    (UpstreamTimeout, 504, "api_error", "upstream_timeout"),
    (ServiceUnavailable, 503, "api_error", "service_unavailable"),
]


def rendered(exc: TollgateError) -> dict[str, object]:
    body = orjson.loads(render_error(exc))
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_every_exception_class_is_covered_here() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(obj, TollgateError) and obj.__module__ == exceptions.__name__
    }

    assert defined == {cls for cls, *_ in FIXED_STATUS} | {UpstreamError}


@pytest.mark.parametrize(("cls", "status", "type_", "code"), FIXED_STATUS, ids=lambda v: getattr(v, "__name__", None))
def test_each_error_renders_the_openai_shape_with_its_status(
    cls: type[TollgateError], status: int, type_: str, code: str | None
) -> None:
    exc = cls("something went wrong")

    assert exc.status == status
    assert str(exc) == "something went wrong"
    assert rendered(exc) == {"message": "something went wrong", "type": type_, "param": None, "code": code}


@pytest.mark.parametrize(("cls", "status", "type_", "code"), FIXED_STATUS, ids=lambda v: getattr(v, "__name__", None))
def test_param_code_and_headers_given_at_raise_time_are_kept(
    cls: type[TollgateError], status: int, type_: str, code: str | None
) -> None:
    exc = cls("bad", param="messages[0].role", code="custom_code", headers={"Retry-After": "3"})

    assert rendered(exc) == {"message": "bad", "type": type_, "param": "messages[0].role", "code": "custom_code"}
    assert exc.headers == {"Retry-After": "3"}
    assert exc.status == status


def test_a_code_given_to_one_instance_does_not_change_the_class_default() -> None:
    RateLimited("slow down", code="tokens_per_minute")

    assert rendered(RateLimited("again"))["code"] == "rate_limit_exceeded"


def test_errors_without_headers_have_an_empty_mapping_not_shared_between_instances() -> None:
    first, second = NotFound("a"), NotFound("b")
    first.headers["X"] = "1"

    assert second.headers == {}


def test_the_subclass_tree_lets_handlers_catch_families() -> None:
    assert issubclass(RequestTooLarge, InvalidRequest)
    assert issubclass(ModelNotFound, NotFound)
    for cls, *_ in FIXED_STATUS:
        assert issubclass(cls, Exception)


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (404, "invalid_request_error"),
        (429, "invalid_request_error"),
        (499, "invalid_request_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (529, "api_error"),
    ],
)
def test_upstream_error_keeps_the_upstream_status_and_picks_the_type_by_status(status: int, type_: str) -> None:
    exc = UpstreamError(status, "from upstream")

    assert exc.status == status
    assert rendered(exc) == {"message": "from upstream", "type": type_, "param": None, "code": None}


def test_upstream_error_passes_through_the_upstream_type_param_code_and_headers() -> None:
    exc = UpstreamError(
        429,
        "Rate limit reached for gpt-4o",
        type="rate_limit_error",
        param="model",
        code="rate_limit_exceeded",
        headers={"retry-after": "20"},
    )

    assert exc.status == 429
    assert exc.headers == {"retry-after": "20"}
    assert rendered(exc) == {
        "message": "Rate limit reached for gpt-4o",
        "type": "rate_limit_error",
        "param": "model",
        "code": "rate_limit_exceeded",
    }


def test_upstream_status_does_not_leak_into_other_instances_or_the_class() -> None:
    UpstreamError(418, "teapot")

    assert UpstreamError(502, "bad gateway").status == 502
    assert TollgateError.status == 500


def test_error_body_renders_messages_with_quotes_and_unicode_as_valid_json() -> None:
    body = orjson.loads(error_body('model "gpt-5" — not found', "invalid_request_error", "model", "model_not_found"))

    assert body == {
        "error": {
            "message": 'model "gpt-5" — not found',
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
