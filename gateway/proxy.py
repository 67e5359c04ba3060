"""The request path of a proxied call, as a list of steps:

    read → validate → authorize → admit (budgets, rate limits) → send with retries and fallback → relay → record

Retries and fallbacks happen only before the first byte reaches the client; after that, a failing stream ends with
an error event the OpenAI SDK understands, and the connection is closed cleanly. The usage record is journaled
before the last byte goes out, so a client that received a whole response always has its record (DESIGN.md §3).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.accounting.ledger import Ledger
from gateway.accounting.limits import Limiter, estimate_tokens
from gateway.accounting.pricing import PriceBook, cost_or_none, format_usd
from gateway.accounting.stream import StreamMeter
from gateway.accounting.tokens import TokenizerUnavailable
from gateway.accounting.usage import (
    Usage,
    ask_for_usage,
    estimate_usage,
    output_from_response,
    usage_from_response,
)
from gateway.exceptions import (
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    TollgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
)
from gateway.exchange import Exchange
from gateway.keys.store import VirtualKey
from gateway.middleware.auth import VIRTUAL_KEY
from gateway.middleware.request_id import REQUEST_ID
from gateway.middleware.tracing import REQUEST_TRACE
from gateway.policy import Policy
from gateway.protocol.sse import error_event
from gateway.protocol.validation import EXTENSION_FIELD, parse_json_object
from gateway.requests import read_body
from gateway.routing import Deployment, ModelRoute, Router, alias_allowed, attempt_order
from gateway.telemetry import attributes as attr
from gateway.telemetry.content import capture_rule, content_attributes
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing, fail_span
from gateway.types import Message, Receive, Scope, Send
from gateway.upstream.base import BufferedResponse, UpstreamCall, UpstreamResponse
from gateway.upstream.registry import ProviderRegistry

logger = logging.getLogger("tollgate.proxy")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Longer Retry-After values are not waited out on the request path: fall back, or hand the 429 to the client.
MAX_RETRY_AFTER = 30.0
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
MAX_TAGS = 20
MAX_TAG_LENGTH = 128
# Request fields recorded on the attempt span as gen_ai.request.* attributes.
REQUEST_PARAMETERS = {
    "max_tokens": attr.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": attr.GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": attr.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": attr.GEN_AI_REQUEST_TOP_P,
    "frequency_penalty": attr.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": attr.GEN_AI_REQUEST_PRESENCE_PENALTY,
    "seed": attr.GEN_AI_REQUEST_SEED,
}

Validator = Callable[[dict[str, Any]], tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # below the API base, e.g. "chat/completions"
    validate: Validator


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
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


def request_tags(extension: Any) -> dict[str, str]:
    """`tollgate.tags` from the request: a small string map recorded with the usage, for cost reports by tag."""
    if not isinstance(extension, dict):
        return {}
    tags = extension.get("tags")
    if tags is None:
        return {}
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise InvalidRequest(f"'tollgate.tags' must be an object of at most {MAX_TAGS} strings.", param="tollgate.tags")
    for name, value in tags.items():
        if not isinstance(value, str) or len(name) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
            raise InvalidRequest(
                f"'tollgate.tags.{name}' must be a string of at most {MAX_TAG_LENGTH} characters.",
                param=f"tollgate.tags.{name}",
            )
    return dict(tags)


class Proxy:
    def __init__(
        self,
        policy: Policy,
        providers: ProviderRegistry,
        *,
        max_body_bytes: int,
        rng: random.Random,
        prices: PriceBook,
        ledger: Ledger,
        limiter: Limiter,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self.policy = policy
        self.router: Router = policy.router()
        self.providers = providers
        self.max_body_bytes = max_body_bytes
        self.rng = rng
        self.prices = prices
        self.ledger = ledger
        self.limiter = limiter
        self.tracing = tracing
        self.metrics = metrics
        self._servers: dict[str, tuple[str, int]] = {}

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

    def server_of(self, deployment: Deployment) -> tuple[str, int]:
        server = self._servers.get(deployment.name)
        if server is None:
            parts = urlsplit(deployment.api_base or "")
            host = parts.hostname or deployment.provider
            port = parts.port or (443 if parts.scheme == "https" else 80)
            server = self._servers[deployment.name] = (host, port)
        return server

    def start_attempt(self, exchange: Exchange, deployment: Deployment, position: int) -> dict[str, str]:
        """Opens the attempt's CLIENT span and returns the headers that go upstream with it."""
        exchange.attempt += 1
        exchange.attempt_open = True
        exchange.deployment = deployment
        exchange.upstream_model = deployment.upstream_model(exchange.alias)
        exchange.provider_name = attr.PROVIDER_NAMES.get(deployment.provider, deployment.provider)
        headers = {"x-request-id": exchange.request_id}
        if not self.tracing.enabled:
            if exchange.trace.incoming:
                headers["traceparent"] = exchange.trace.incoming
            return headers
        operation = attr.OPERATIONS.get(exchange.endpoint, exchange.endpoint)
        host, port = self.server_of(deployment)
        attributes: dict[str, Any] = {
            attr.GEN_AI_OPERATION_NAME: operation,
            attr.GEN_AI_PROVIDER_NAME: exchange.provider_name,
            attr.GEN_AI_REQUEST_MODEL: exchange.upstream_model,
            attr.GEN_AI_REQUEST_STREAM: exchange.stream,
            attr.SERVER_ADDRESS: host,
            attr.SERVER_PORT: port,
            attr.TOLLGATE_DEPLOYMENT: deployment.name,
            attr.TOLLGATE_ATTEMPT: exchange.attempt,
        }
        if position:
            attributes[attr.TOLLGATE_FALLBACK] = True
        body = exchange.body
        for name, attribute in REQUEST_PARAMETERS.items():
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[attribute] = value
        n = body.get("n")
        if isinstance(n, int) and n != 1:
            attributes[attr.GEN_AI_REQUEST_CHOICE_COUNT] = n
        stop = body.get("stop")
        if isinstance(stop, str | list):
            attributes[attr.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        span = self.tracing.start_attempt(exchange.trace, f"{operation} {exchange.upstream_model}", attributes)
        exchange.attempt_span = span
        traceparent = self.tracing.traceparent_for(span)
        if traceparent:
            headers["traceparent"] = traceparent
        return headers

    def end_attempt(self, exchange: Exchange, error_type: str | None, message: str | None = None) -> None:
        # A failed last attempt is ended where it failed; the request's end (observe) must not count it again.
        if not exchange.attempt_open:
            return
        exchange.attempt_open = False
        deployment = exchange.deployment
        outcome = error_type or "ok"
        if deployment is not None:
            self.metrics.attempts.labels(deployment.name, outcome).inc()
        span, exchange.attempt_span = exchange.attempt_span, None
        if span is not None:
            if error_type is not None:
                fail_span(span, error_type, message)
            span.end()

    async def send_with_fallback(self, exchange: Exchange, plan: list[Deployment], raw: bytes) -> UpstreamResponse:
        failure: TollgateError | BufferedResponse | None = None
        for position, deployment in enumerate(plan):
            if position:
                self.metrics.fallbacks.labels(exchange.route.alias).inc()
            has_fallback = position < len(plan) - 1
            provider = await self.providers.get(deployment.provider)
            model = deployment.upstream_model(exchange.alias)
            if model == exchange.alias and raw:
                body, body_bytes = exchange.body, raw
            else:
                body = {**exchange.body, "model": model}
                body_bytes = orjson.dumps(body)
            for attempt in range(deployment.retries + 1):
                if attempt:
                    self.metrics.retries.labels(deployment.name).inc()
                can_retry = attempt < deployment.retries
                headers = self.start_attempt(exchange, deployment, position)
                call = UpstreamCall(deployment, exchange.endpoint, body, body_bytes, exchange.stream, headers)
                try:
                    response = await provider.send(call)
                except (UpstreamTimeout, UpstreamUnavailable) as exc:
                    failure = exc
                    self.end_attempt(exchange, type(exc).__name__, exc.message)
                    logger.info("deployment %s attempt %d failed: %s", deployment.name, attempt + 1, exc.message)
                    # A refused connection rarely heals in milliseconds, and a timeout has already cost the client
                    # the whole timeout: prefer the next deployment, and never wait out a timeout twice.
                    if has_fallback or not can_retry or isinstance(exc, UpstreamTimeout):
                        break
                    await asyncio.sleep(backoff_delay(attempt, self.rng))
                    continue
                if response.status not in RETRYABLE_STATUSES:
                    # The attempt span stays open: it ends when the relay has the usage.
                    return response
                error = await response.read()
                response.close()
                headers_seen = {name.lower(): value for name, value in response.headers.items()}
                failure = BufferedResponse(response.status, headers_seen, normalized_error(response.status, error))
                self.end_attempt(exchange, str(response.status))
                logger.info("deployment %s attempt %d answered %d", deployment.name, attempt + 1, response.status)
                wait = retry_after_seconds(headers_seen)
                if not can_retry or (wait is not None and wait > MAX_RETRY_AFTER):
                    break
                await asyncio.sleep(wait if wait is not None else backoff_delay(attempt, self.rng))
        if isinstance(failure, BufferedResponse):
            return failure
        assert failure is not None, "a plan always holds at least one deployment"
        raise failure

    # -- metering ----------------------------------------------------------------------------------------------

    def price(self, exchange: Exchange, usage: Usage | None) -> None:
        """Sets the cost; None as usage prices a call that consumed nothing (an error) at $0 when the model has a
        price, so it is never mistaken for an unpriced one."""
        exchange.usage = usage
        deployment = exchange.deployment
        provider = deployment.provider if deployment else None
        # A policy override for the model the deployment names wins over the map's price for the (often dated)
        # model the upstream reports; without an override, the reported model is the more exact price.
        price = self.prices.override(exchange.upstream_model, provider)
        if price is None and exchange.response_model:
            price = self.prices.lookup(exchange.response_model, provider)
        if price is None:
            price = self.prices.lookup(exchange.upstream_model, provider)
        exchange.cost = cost_or_none(usage or Usage(), price)

    def estimate(self, exchange: Exchange, output: Any) -> Usage | None:
        try:
            return estimate_usage(exchange.endpoint, exchange.body, exchange.upstream_model, output)
        except TokenizerUnavailable as exc:
            logger.warning("cannot estimate usage: %s", exc)
            return None

    def finish(self, exchange: Exchange) -> None:
        """Journals the usage record (once) and closes the attempt's telemetry. Runs before the last byte is sent."""
        if exchange.recorded:
            return
        exchange.recorded = True
        self.ledger.record(exchange.record())
        self.observe(exchange)

    def observe(self, exchange: Exchange) -> None:
        usage = exchange.usage
        team = exchange.key.team
        succeeded = exchange.http_status < 400
        model = (exchange.response_model or exchange.upstream_model) if succeeded else "other"
        # The requested model as label only when the upstream served it: clients choose names under a pattern
        # route, and only real models succeed, which keeps the label set bounded.
        request_model = exchange.upstream_model if succeeded else exchange.route.alias
        operation = attr.OPERATIONS.get(exchange.endpoint, exchange.endpoint)
        error_type = None if exchange.http_status < 400 and exchange.status == "ok" else str(exchange.http_status)
        if exchange.status in ("stream_broken", "client_disconnected"):
            error_type = exchange.status
        series = self.metrics.call_series(
            operation,
            exchange.provider_name,
            request_model,
            team,
            exchange.route.alias,
            str(exchange.http_status),
            error_type or "",
            model,
        )
        series.requests.inc()
        series.duration.observe(exchange.latency_ms / 1000)
        # Time to first chunk is a streaming measure (semconv: reported for streaming calls, not otherwise).
        ttfc = exchange.ttft_ms / 1000 if exchange.stream and exchange.ttft_ms is not None else None
        if ttfc is not None:
            series.time_to_first_chunk.observe(ttfc)
        if usage is not None:
            series.input_tokens.observe(usage.input_tokens)
            if operation != "embeddings":
                series.output_tokens.observe(usage.output_tokens)
            if exchange.cost is None:
                series.unpriced.inc()
            else:
                # Prometheus counters are floats: the ledger holds the exact figure, this is for dashboards.
                series.cost.inc(float(exchange.cost))
        span = exchange.attempt_span
        if span is not None:
            if exchange.response_model:
                span.set_attribute(attr.GEN_AI_RESPONSE_MODEL, exchange.response_model)
            if exchange.response_id:
                span.set_attribute(attr.GEN_AI_RESPONSE_ID, exchange.response_id)
            if exchange.finish_reasons:
                span.set_attribute(attr.GEN_AI_RESPONSE_FINISH_REASONS, list(exchange.finish_reasons))
            if ttfc is not None:
                span.set_attribute(attr.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, ttfc)
            if usage is not None:
                span.set_attribute(attr.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens)
                span.set_attribute(attr.GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens)
                span.set_attribute(attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cached_input_tokens)
                span.set_attribute(attr.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_tokens)
                span.set_attribute(attr.TOLLGATE_USAGE_SOURCE, usage.source)
            if exchange.cost is not None:
                span.set_attribute(attr.TOLLGATE_COST_USD, float(exchange.cost))
            if exchange.capture is not None:
                span.set_attributes(
                    content_attributes(exchange.capture, exchange.body, exchange.output, exchange.finish_reasons)
                )
        server = exchange.trace.span
        if server is not None:
            server.set_attribute(attr.TOLLGATE_TEAM, team)
            server.set_attribute(attr.TOLLGATE_KEY_ID, exchange.key.id)
            server.set_attribute(attr.TOLLGATE_ALIAS, exchange.alias)
            server.set_attribute(attr.TOLLGATE_REQUEST_ID, exchange.request_id)
            if exchange.cost is not None:
                server.set_attribute(attr.TOLLGATE_COST_USD, float(exchange.cost))
        self.end_attempt(exchange, error_type)

    # -- relay -------------------------------------------------------------------------------------------------

    async def relay(self, exchange: Exchange, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        if exchange.stream and response.status == 200:
            await self.relay_stream(exchange, response, receive, send)
            return
        body = await response.read()
        exchange.first_chunk_at = time.perf_counter()
        exchange.http_status = response.status
        headers = [(b"content-type", response.headers.get("content-type", "application/json").encode())]
        if response.status >= 400:
            body = normalized_error(response.status, body)
            exchange.status = "upstream_error"
            self.price(exchange, None)
            retry_after = response.headers.get("retry-after")
            if retry_after and response.status in (429, 503):
                headers.append((b"retry-after", retry_after.encode()))
        else:
            parsed = self.parse_response(exchange, body)
            usage = usage_from_response(parsed)
            if usage is None or exchange.capture is not None:
                # The response's own text: for the estimate when the provider reported no usage, and for capture.
                exchange.output = output_from_response(parsed)
            if usage is None:
                usage = self.estimate(exchange, exchange.output)
            if usage is not None:
                self.price(exchange, usage)
            headers.append((b"x-tollgate-cost-usd", format_usd(exchange.cost).encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        self.finish(exchange)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def parse_response(exchange: Exchange, body: bytes) -> Any:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(parsed, dict):
            model, response_id = parsed.get("model"), parsed.get("id")
            exchange.response_model = model if isinstance(model, str) else None
            exchange.response_id = response_id if isinstance(response_id, str) else None
            choices = parsed.get("choices")
            if isinstance(choices, list):
                exchange.finish_reasons = tuple(
                    str(c["finish_reason"]) for c in choices if isinstance(c, dict) and c.get("finish_reason")
                )
        return parsed

    async def relay_stream(self, exchange: Exchange, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        disconnected = False

        def on_disconnect(task: asyncio.Task[Message]) -> None:
            nonlocal disconnected
            if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
                disconnected = True
                # Closing the upstream response aborts its connection, which cancels the generation upstream.
                response.close()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_disconnect)
        meter = StreamMeter(hide_usage_chunk=not exchange.client_asked_usage, keep_output=exchange.capture is not None)
        exchange.http_status = 200
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
        broken: TollgateError | None = None
        try:
            async for chunk in response.iter_chunks():
                if exchange.first_chunk_at is None:
                    exchange.first_chunk_at = time.perf_counter()
                if disconnected:
                    break
                out = meter.feed(chunk)
                if meter.done:
                    # The client has everything once [DONE] is out: journal the record first.
                    self.settle_stream(exchange, meter)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            broken = exc
        finally:
            watcher.cancel()
            response.close()
        tail = meter.finish()
        if disconnected:
            exchange.status = "client_disconnected"
        elif broken is not None or not meter.done:
            exchange.status = "stream_broken"
        self.settle_stream(exchange, meter)
        if disconnected:
            return
        if tail:
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        if broken is not None:
            logger.warning("stream broke after it started: %s", broken.message)
            await send(
                {"type": "http.response.body", "body": error_event(broken.message, code=broken.code), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    def settle_stream(self, exchange: Exchange, meter: StreamMeter) -> None:
        if exchange.recorded:
            return
        exchange.response_model = meter.response_model
        exchange.response_id = meter.response_id
        exchange.finish_reasons = tuple(meter.finish_reasons[i] for i in sorted(meter.finish_reasons))
        if exchange.capture is not None:
            exchange.output = meter.output()
        usage = meter.usage
        if usage is None:
            try:
                usage = meter.final_usage(exchange.endpoint, exchange.body, exchange.upstream_model)
            except TokenizerUnavailable as exc:
                logger.warning("cannot estimate usage: %s", exc)
        if usage is not None:
            self.price(exchange, usage)
        self.finish(exchange)

    # -- the handler -------------------------------------------------------------------------------------------

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        created_at = datetime.now(UTC)
        raw = await read_body(receive, self.max_body_bytes)
        raw_size = len(raw)
        body = parse_json_object(raw)
        alias, stream = endpoint.validate(body)
        key: VirtualKey = scope[VIRTUAL_KEY]
        route = self.authorize(alias, key)
        tags: dict[str, str] = {}
        if EXTENSION_FIELD in body:
            # Tollgate's own request field never reaches an upstream.
            tags = request_tags(body.pop(EXTENSION_FIELD))
            raw = b""
        upstream_body, client_asked = ask_for_usage(endpoint.path, body)
        if not client_asked:
            raw = b""
        user = body.get("user")
        exchange = Exchange(
            request_id=scope[REQUEST_ID],
            created_at=created_at,
            started=started,
            key=key,
            endpoint=endpoint.path,
            alias=alias,
            route=route,
            stream=stream,
            body=upstream_body,
            trace=scope[REQUEST_TRACE],
            client_asked_usage=client_asked,
            tags=tags,
            user=user[:200] if isinstance(user, str) else None,
        )
        if self.tracing.enabled and self.policy.capture_content:
            exchange.capture = capture_rule(self.policy.capture_content, key.team, alias)
        admission = await self.limiter.admit(key, self.admission_estimate(exchange, raw_size))
        try:
            plan = attempt_order(route.deployments, self.rng)
            try:
                response = await self.send_with_fallback(exchange, plan, raw)
            except TollgateError as exc:
                exchange.status = "upstream_error"
                exchange.http_status = exc.status
                self.price(exchange, None)
                self.finish(exchange)
                raise
            await self.relay(exchange, response, receive, send)
        finally:
            if not exchange.recorded:
                # Cancelled or failed in a way the steps above did not see: still one record per request.
                exchange.status = "client_disconnected" if exchange.http_status == 0 else exchange.status
                exchange.http_status = exchange.http_status or 499
                self.finish(exchange)
            usage = exchange.usage
            await self.limiter.settle(admission, usage.total_tokens if usage else 0, exchange.cost)

    def admission_estimate(self, exchange: Exchange, raw_size: int) -> int:
        """Tokens to reserve against per-minute limits before the call (settle replaces it with the real count)."""
        if not self.limiter.counts_tokens:
            return 0
        maximum = exchange.body.get("max_completion_tokens") or exchange.body.get("max_tokens")
        return estimate_tokens(raw_size, maximum if isinstance(maximum, int) else None)
