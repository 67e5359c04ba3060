"""Every error Tollgate raises on purpose, rendered in OpenAI's error shape.

    TollgateError                      500 api_error
    ├── InvalidRequest                 400 invalid_request_error  (names the offending field in `param`)
    │   └── RequestTooLarge            413 invalid_request_error  code=request_too_large
    ├── AuthenticationFailed           401 invalid_request_error  code=invalid_api_key
    ├── PermissionDenied               403 permission_error       code=model_not_allowed / forbidden
    ├── NotFound                       404 invalid_request_error
    │   └── ModelNotFound              404 invalid_request_error  code=model_not_found
    ├── MethodNotAllowed               405 invalid_request_error
    ├── RateLimited                    429 rate_limit_error       (carries Retry-After)
    ├── UpstreamError                  the upstream's own status and message, passed through
    ├── UpstreamUnavailable            502 api_error              code=upstream_unreachable
    ├── UpstreamTimeout                504 api_error              code=upstream_timeout
    └── ServiceUnavailable             503 api_error

`render_error` turns any of them into the body `{"error": {"message", "type", "param", "code"}}`; the error
middleware is the only place that calls it for a request, so every path answers in the same shape.
"""

from __future__ import annotations

import orjson

from gateway.protocol.types import ErrorResponse


class TollgateError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(TollgateError):
    status = 400
    type = "invalid_request_error"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(TollgateError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(TollgateError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(TollgateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(TollgateError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(TollgateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(TollgateError):
    """The upstream answered with an error status; its status and message reach the client unchanged."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.status = status
        self.type = type or ("api_error" if status >= 500 else "invalid_request_error")


class UpstreamUnavailable(TollgateError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(TollgateError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(TollgateError):
    status = 503
    code = "service_unavailable"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    body: ErrorResponse = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return orjson.dumps(body)


def render_error(exc: TollgateError) -> bytes:
    return error_body(exc.message, exc.type, exc.param, exc.code)
