"""Passthrough to anything that speaks the OpenAI API (OpenAI, Azure OpenAI, vLLM, Ollama, Groq, llama.cpp, ...).

Bytes are relayed as they arrive; nothing is parsed here. The client is aiohttp: on this machine it costs about a
tenth of httpx/httpcore's CPU per request (DESIGN.md §7), and the proxy's throughput is mostly this number.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp

from gateway.exceptions import UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.base import UpstreamCall


@contextmanager
def map_aiohttp_exceptions(deployment: str) -> Iterator[None]:
    """aiohttp's exceptions → ours, in one place (as httpx's `map_httpcore_exceptions` does)."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"The upstream of deployment {deployment!r} timed out.") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamUnavailable(f"The upstream of deployment {deployment!r} ended the response early.") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
        raise UpstreamUnavailable(
            f"The upstream of deployment {deployment!r} could not be reached: {type(exc).__name__}."
        ) from exc


def new_session(limit: int = 1024) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # No cookie jar: a proxy must not carry one client's cookies into another client's request.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class AiohttpResponse:
    __slots__ = ("_deployment", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, deployment: str) -> None:
        self._response = response
        self._deployment = deployment
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            with map_aiohttp_exceptions(self._deployment):
                async for chunk in self._response.content.iter_any():
                    yield chunk
        except BaseException:
            # A broken or abandoned body must not go back to the pool.
            self._response.close()
            raise

    async def read(self) -> bytes:
        try:
            with map_aiohttp_exceptions(self._deployment):
                return await self._response.read()
        except BaseException:
            self._response.close()
            raise

    def close(self) -> None:
        self._response.close()


class OpenAICompatibleProvider:
    def __init__(self, session: aiohttp.ClientSession, name: str = "openai", *, azure: bool = False) -> None:
        self.name = name
        self._session = session
        self._azure = azure

    def _target(self, call: UpstreamCall) -> tuple[str, dict[str, str]]:
        deployment = call.deployment
        base = deployment.api_base or "https://api.openai.com/v1"
        headers = {"Content-Type": "application/json", **call.headers, **deployment.headers}
        if self._azure:
            url = f"{base}/openai/deployments/{call.body['model']}/{call.endpoint}?api-version={deployment.api_version}"
            if deployment.api_key:
                headers["api-key"] = deployment.api_key
        else:
            url = f"{base}/{call.endpoint}"
            if deployment.api_key:
                headers["Authorization"] = f"Bearer {deployment.api_key}"
        return url, headers

    async def send(self, call: UpstreamCall) -> AiohttpResponse:
        url, headers = self._target(call)
        timeout_s = call.deployment.timeout
        # A stream may legitimately run for minutes: bound the wait between chunks, not the whole response.
        timeout = (
            aiohttp.ClientTimeout(total=None, connect=min(timeout_s, 30.0), sock_read=timeout_s)
            if call.stream
            else aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 30.0))
        )
        with map_aiohttp_exceptions(call.deployment.name):
            response = await self._session.post(url, data=call.raw_body, headers=headers, timeout=timeout)
        return AiohttpResponse(response, call.deployment.name)

    async def aclose(self) -> None:
        # The session is shared and closed by its owner (the provider registry).
        return None
