"""Opens the request's trace (a SERVER span when tracing is on) and returns its id as `x-tollgate-trace-id`."""

from __future__ import annotations

from opentelemetry.trace.status import Status, StatusCode

from gateway.requests import header
from gateway.telemetry import attributes as attr
from gateway.telemetry.tracing import Tracing
from gateway.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_TRACE = "tollgate.trace"
# Probes and scrapes arrive every few seconds and say nothing about calls: no spans for them.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
TRACE_HEADER = b"x-tollgate-trace-id"


_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/models",
        "/v1/reports/cost",
        "/v1/reports/usage",
        "/admin/keys",
    }
)
_TEMPLATES = (("/v1/models/", "/v1/models/{model}"), ("/admin/keys/", "/admin/keys/{id}"))


def route_template(path: str) -> str | None:
    """The route a path matched, as a template; None for paths nothing serves (span names must stay bounded)."""
    if not path.startswith(("/v1/", "/admin")):
        path = "/v1" + path  # clients configured without the /v1 suffix
    if path in _ROUTES:
        return path
    for prefix, template in _TEMPLATES:
        if path.startswith(prefix):
            return template
    return None


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = header(scope, b"traceparent")
        method = scope["method"]
        path = scope["path"]
        route = route_template(path)
        attributes = {attr.HTTP_REQUEST_METHOD: method, attr.URL_PATH: path}
        if route is not None:
            attributes[attr.HTTP_ROUTE] = route
        request_trace = self.tracing.start_request(
            f"{method} {route}" if route else method,
            raw.decode("latin-1") if raw is not None else None,
            attributes,
            record=path not in UNTRACED_PATHS,
        )
        scope[REQUEST_TRACE] = request_trace
        trace_header = (TRACE_HEADER, request_trace.trace_id_hex.encode())
        span = request_trace.span
        status = 0

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), trace_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            if span is not None:
                span.set_attribute(attr.HTTP_RESPONSE_STATUS_CODE, status or 500)
                if status >= 500 or status == 0:
                    span.set_attribute(attr.ERROR_TYPE, str(status or 500))
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
