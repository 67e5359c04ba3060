"""The request path of a proxied call, as a list of steps:

    read → validate → authorize → plan attempts → send with retries and fallback → relay

Retries and fallbacks happen only before the first byte reaches the client; after that, a failing stream ends with
an error event the OpenAI SDK understands, and the connection is closed cleanly.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.exceptions import (
    ModelNotFound,
    PermissionDenied,
    TollgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
)
from gateway.keys.store import VirtualKey
from gateway.middleware.auth import VIRTUAL_KEY
from gateway.middleware.request_id import REQUEST_ID
from gateway.policy import Policy
from gateway.protocol.sse import error_event
from gateway.protocol.validation import EXTENSION_FIELD, parse_json_object
from gateway.requests import read_body
from gateway.routing import Deployment, ModelRoute, Router, alias_allowed, attempt_order
from gateway.types import Message, Receive, Scope, Send
from gateway.upstream.base import BufferedResponse, UpstreamCall, UpstreamResponse
from gateway.upstream.registry import ProviderRegistry

logger = logging.getLogger("tollgate.proxy")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Longer Retry-After values are not waited out on the request path: fall back, or hand the 429 to the client.
MAX_RETRY_AFTER = 30.0
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0

Validator = Callable[[dict[str, Any]], tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # below the API base, e.g. "chat/completions"
    validate: Validator


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `retry-after` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter (attempt 0 is the first retry)."""
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def normalized_error(status: int, body: bytes) -> bytes:
    """An upstream error body in OpenAI's shape: relayed as is when it already is, wrapped when it isn't."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]:
        return body
    text = body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return error_body(f"Upstream error {status}: {text}", kind, code=f"upstream_{status}")


class Proxy:
    def __init__(self, policy: Policy, providers: ProviderRegistry, max_body_bytes: int, rng: random.Random) -> None:
        self.policy = policy
        self.router: Router = policy.router()
        self.providers = providers
        self.max_body_bytes = max_body_bytes
        self.rng = rng

    # -- steps -------------------------------------------------------------------------------------------------

    def authorize(self, alias: str, key: VirtualKey) -> ModelRoute:
        route = self.router.resolve(alias)
        if route is None:
            raise ModelNotFound(f"The model '{alias}' does not exist or is not routed by this gateway.", param="model")
        if not alias_allowed(alias, self.policy.team(key.team).models):
            raise PermissionDenied(
                f"Team '{key.team}' is not allowed to use the model '{alias}'.", param="model", code="model_not_allowed"
            )
        return route

    def upstream_calls(
        self, endpoint: Endpoint, alias: str, body: dict[str, Any], raw: bytes, stream: bool, headers: dict[str, str]
    ) -> Callable[[Deployment], UpstreamCall]:
        def build(deployment: Deployment) -> UpstreamCall:
            model = deployment.upstream_model(alias)
            if model == alias and raw:
                return UpstreamCall(deployment, endpoint.path, body, raw, stream, headers)
            upstream_body = {**body, "model": model}
            return UpstreamCall(deployment, endpoint.path, upstream_body, orjson.dumps(upstream_body), stream, headers)

        return build

    async def send_with_fallback(
        self, plan: list[Deployment], build: Callable[[Deployment], UpstreamCall]
    ) -> UpstreamResponse:
        failure: TollgateError | BufferedResponse | None = None
        for position, deployment in enumerate(plan):
            has_fallback = position < len(plan) - 1
            call = build(deployment)
            provider = await self.providers.get(deployment.provider)
            for attempt in range(deployment.retries + 1):
                can_retry = attempt < deployment.retries
                try:
                    response = await provider.send(call)
                except (UpstreamTimeout, UpstreamUnavailable) as exc:
                    failure = exc
                    logger.info("deployment %s attempt %d failed: %s", deployment.name, attempt + 1, exc.message)
                    # A refused connection rarely heals in milliseconds, and a timeout has already cost the client
                    # the whole timeout: prefer the next deployment, and never wait out a timeout twice.
                    if has_fallback or not can_retry or isinstance(exc, UpstreamTimeout):
                        break
                    await asyncio.sleep(backoff_delay(attempt, self.rng))
                    continue
                if response.status not in RETRYABLE_STATUSES:
                    return response
                body = await response.read()
                response.close()
                headers = {name.lower(): value for name, value in response.headers.items()}
                failure = BufferedResponse(response.status, headers, normalized_error(response.status, body))
                logger.info("deployment %s attempt %d answered %d", deployment.name, attempt + 1, response.status)
                wait = retry_after_seconds(response.headers)
                if not can_retry or (wait is not None and wait > MAX_RETRY_AFTER):
                    break
                await asyncio.sleep(wait if wait is not None else backoff_delay(attempt, self.rng))
        if isinstance(failure, BufferedResponse):
            return failure
        assert failure is not None, "a plan always holds at least one deployment"
        raise failure

    async def relay(self, response: UpstreamResponse, stream: bool, receive: Receive, send: Send) -> None:
        if not stream or response.status != 200:
            body = await response.read()
            if response.status >= 400:
                body = normalized_error(response.status, body)
            content_type = response.headers.get("content-type", "application/json")
            headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            retry_after = response.headers.get("retry-after")
            if retry_after and response.status in (429, 503):
                headers.append((b"retry-after", retry_after.encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.relay_stream(response, receive, send)

    async def relay_stream(self, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        disconnected = False

        def on_disconnect(task: asyncio.Task[Message]) -> None:
            nonlocal disconnected
            if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
                disconnected = True
                # Closing the upstream response aborts its connection, which cancels the generation upstream.
                response.close()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_disconnect)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        try:
            async for chunk in response.iter_chunks():
                if disconnected:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            if not disconnected:
                logger.warning("stream broke after it started: %s", exc.message)
                await send(
                    {"type": "http.response.body", "body": error_event(exc.message, code=exc.code), "more_body": True}
                )
        finally:
            watcher.cancel()
            response.close()
        await send({"type": "http.response.body", "body": b""})

    # -- the handler -------------------------------------------------------------------------------------------

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive, self.max_body_bytes)
        body = parse_json_object(raw)
        alias, stream = endpoint.validate(body)
        key: VirtualKey = scope[VIRTUAL_KEY]
        route = self.authorize(alias, key)
        if EXTENSION_FIELD in body:
            # Tollgate's own request field never reaches an upstream.
            body.pop(EXTENSION_FIELD)
            raw = b""
        headers = {"x-request-id": scope[REQUEST_ID]}
        plan = attempt_order(route.deployments, self.rng)
        response = await self.send_with_fallback(plan, self.upstream_calls(endpoint, alias, body, raw, stream, headers))
        await self.relay(response, stream, receive, send)
