"""Providers that do not speak OpenAI's wire format (Anthropic, Gemini, Bedrock, ...), through litellm.

litellm turns the OpenAI request into the provider's format and the provider's answer back into OpenAI objects;
this module adapts those objects to the `Provider` seam: OpenAI-shaped bytes out, `UpstreamTimeout` and
`UpstreamUnavailable` for transport failures, an upstream's error status as a response the proxy can retry or
relay. litellm is imported when the first provider is built (in a worker thread, by the registry), never when this
module is: it costs seconds and ~160 MB, and most gateways never need it.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import aiohttp
import orjson

from gateway.exceptions import TollgateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable, error_body
from gateway.protocol.sse import DONE, encode_event, error_event
from gateway.upstream.base import BufferedResponse, UpstreamCall

# The pydantic warning `_litellm` silences; public because pytest resets warning filters for each test.
READONLY_WARNING = r"Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier"

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}

_FUNCTIONS = {"chat/completions": "acompletion", "completions": "atext_completion", "embeddings": "aembedding"}

# The request fields forwarded to litellm, per endpoint. litellm takes the body as keyword arguments, and many of
# its keywords decide where and how it sends (`base_url`, `api_key`, `aws_*`, `vertex_credentials`, `client`,
# `mock_response`, `metadata`): forwarding an unknown field could send this deployment's credentials to a URL the
# client chose, so any other field is refused rather than passed on.
_FIELDS: Mapping[str, frozenset[str]] = {
    "chat/completions": frozenset(
        {
            "messages",
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "modalities",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        }
    ),
    "completions": frozenset(
        {
            "prompt",
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "n",
            "presence_penalty",
            "seed",
            "stop",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
        }
    ),
    "embeddings": frozenset({"input", "dimensions", "encoding_format", "user"}),
}


@cache
def _litellm() -> Any:
    # The packaged cost map: without this, importing litellm fetches it from GitHub.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # Tollgate meters, logs and traces every request itself; litellm's callbacks would do it twice.
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.input_callback = []
    # litellm builds many pydantic models on first use (the streaming ones on the first stream), and pydantic warns
    # then about litellm's own typing; nothing a caller can act on.
    warnings.filterwarnings("ignore", message=READONLY_WARNING, category=UserWarning)
    return litellm


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised while handling: litellm re-raises transport errors as its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# What litellm puts before the provider's words: "litellm.RateLimitError: AnthropicException - ".
_LITELLM_PREFIXES = re.compile(r"^(?:litellm\.\w+: |\w+(?:Exception|Error) - )+")


def _json_error_message(text: str) -> str | None:
    """`error.message` (or `message`) of a provider's JSON error body, which litellm quotes as text or as bytes."""
    try:
        raw = ast.literal_eval(text) if text.startswith(("b'", 'b"')) else text
        body = orjson.loads(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error", body)
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else None


def _provider_message(exc: BaseException) -> str:
    message = str(getattr(exc, "message", None) or exc)
    _, separator, detail = message.partition(" - ")
    provider_message = _json_error_message(detail) if separator else None
    if provider_message is not None:
        return provider_message
    # litellm appends tracebacks and bug-report links to some messages: neither is for the client.
    return _LITELLM_PREFIXES.sub("", message.split("\n", 1)[0])


def _retry_after(exc: BaseException) -> dict[str, str]:
    for candidate in _chain(exc):
        for headers in (
            getattr(candidate, "litellm_response_headers", None),
            getattr(candidate, "headers", None),
            getattr(getattr(candidate, "response", None), "headers", None),
        ):
            if not isinstance(headers, Mapping):
                continue
            for key, value in headers.items():
                if str(key).lower() == "retry-after":
                    return {"retry-after": str(value)}
    return {}


def _translate(exc: BaseException, deployment: str) -> TollgateError | None:
    """litellm's exceptions → ours; None for an exception litellm did not make (a bug, to be raised as is).

    litellm's types do not say what happened: a refused connection to Anthropic arrives as a 500
    `InternalServerError`, to Gemini as an `APIConnectionError`; a stream that fails as a 503
    `MidStreamFallbackError` around the real error; a broken translation as an `APIConnectionError`. So the
    causes are read first and the status last.
    """
    import httpx
    import openai

    original = getattr(exc, "original_exception", None)
    if isinstance(original, openai.OpenAIError):
        exc = original
    chain = list(_chain(exc))
    name = repr(deployment)
    if any(isinstance(e, openai.APITimeoutError | httpx.TimeoutException | TimeoutError) for e in chain):
        return UpstreamTimeout(f"The upstream of deployment {name} timed out.")
    if any(isinstance(e, httpx.ConnectError | aiohttp.ClientConnectorError | ConnectionRefusedError) for e in chain):
        return UpstreamUnavailable(f"The upstream of deployment {name} could not be reached.")
    dropped = httpx.TransportError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError
    if any(isinstance(e, dropped) for e in chain):
        return UpstreamUnavailable(f"The upstream of deployment {name} closed the connection early.")
    if not isinstance(exc, openai.OpenAIError):
        return None
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APIConnectionError) or not isinstance(status, int) or not 400 <= status <= 599:
        return UpstreamUnavailable(f"The upstream of deployment {name} failed: {_provider_message(exc)}")
    return UpstreamError(
        status, _provider_message(exc), type="rate_limit_error" if status == 429 else None, headers=_retry_after(exc)
    )


@contextmanager
def map_litellm_exceptions(deployment: str) -> Iterator[None]:
    """Translates what litellm raises, in one place (as httpx's `map_httpcore_exceptions` does)."""
    import httpx
    import openai

    try:
        yield
    # litellm's own families and the transport errors it lets through; anything else is a bug and stays one.
    except (openai.OpenAIError, httpx.HTTPError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        translated = _translate(exc, deployment)
        if translated is None:
            raise
        raise translated from exc


def _error_response(error: UpstreamError) -> BufferedResponse:
    headers = {**_JSON, **error.headers}
    return BufferedResponse(error.status, headers, error_body(error.message, error.type, error.param, error.code))


def _refusal(message: str, param: str | None = None) -> BufferedResponse:
    return BufferedResponse(400, _JSON, error_body(message, "invalid_request_error", param, None))


def _api_base(provider: str, api_base: str | None) -> str | None:
    if api_base is None:
        return None
    base = api_base.rstrip("/")
    # litellm appends /v1/messages to an Anthropic base (as Anthropic's SDK does), so an OpenAI-style base ending
    # in /v1 would be asked for /v1/v1/messages.
    if provider == "anthropic" and base.endswith("/v1"):
        base = base.removesuffix("/v1")
    return base


async def _aclose(stream: Any) -> None:
    # Releases the upstream connection now rather than when the stream is collected.
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class TranslatedProvider:
    def __init__(self, name: str) -> None:
        # litellm's provider prefix, which is also what the proxy reports as `gen_ai.provider.name`.
        self.name = name
        self._litellm = _litellm()

    async def send(self, call: UpstreamCall) -> BufferedResponse:
        function = _FUNCTIONS.get(call.endpoint)
        if function is None:
            return _refusal(f"The endpoint /v1/{call.endpoint} is not supported for provider {self.name!r}.")
        fields = _FIELDS[call.endpoint]
        arguments = {key: value for key, value in call.body.items() if key not in ("model", "stream")}
        for key in arguments:
            if key not in fields:
                return _refusal(f"The field {key!r} is not supported for provider {self.name!r}.", param=key)
        deployment = call.deployment
        arguments.update(
            model=f"{self.name}/{call.body['model']}",
            api_base=_api_base(self.name, deployment.api_base),
            api_key=deployment.api_key,
            timeout=deployment.timeout,
            # Retries and fallbacks are the proxy's: it knows the other deployments.
            num_retries=0,
        )
        if deployment.api_version is not None:
            arguments["api_version"] = deployment.api_version
        headers = {**call.headers, **deployment.headers}
        if headers:
            arguments["extra_headers"] = headers
        if call.endpoint != "embeddings":
            arguments["stream"] = call.stream
        try:
            with map_litellm_exceptions(deployment.name):
                result = await getattr(self._litellm, function)(**arguments)
            if not call.stream or call.endpoint == "embeddings":
                return BufferedResponse(200, _JSON, orjson.dumps(result.model_dump()))
            first = await self._first_chunk(result, deployment.name)
        except UpstreamError as error:
            return _error_response(error)
        return BufferedResponse(200, _SSE, stream=self._relay(result, first, deployment.name))

    @staticmethod
    async def _first_chunk(stream: Any, deployment: str) -> Any:
        """The first chunk, or None for an empty stream.

        Some providers' errors only surface on the first chunk: reading it here turns them into an error response
        or exception while the proxy can still retry or fall back.
        """
        try:
            with map_litellm_exceptions(deployment):
                return await anext(aiter(stream), None)
        except BaseException:
            await _aclose(stream)
            raise

    @staticmethod
    async def _relay(stream: Any, first: Any, deployment: str) -> AsyncIterator[bytes]:
        try:
            if first is None:
                yield DONE
                return
            yield encode_event(first.model_dump(exclude_none=True))
            with map_litellm_exceptions(deployment):
                async for chunk in stream:
                    yield encode_event(chunk.model_dump(exclude_none=True))
            yield DONE
        except TollgateError as error:
            # The client already has a 200 and some events: the failure can only be reported in the stream.
            yield error_event(error.message, error.type, error.code)
        finally:
            await _aclose(stream)

    async def aclose(self) -> None:
        # litellm pools its HTTP clients per event loop in a module-level cache; this closes them all.
        await self._litellm.close_litellm_async_clients()
