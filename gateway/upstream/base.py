"""The seam between the proxy and whatever serves a model.

A provider takes an `UpstreamCall` (an OpenAI-shaped request already addressed to one deployment) and returns an
`UpstreamResponse` whose body is OpenAI-shaped bytes: a JSON document, or an SSE stream of `data:` events ending in
`data: [DONE]`. The proxy relays those bytes without re-serialising them, so a provider that translates another
wire format (litellm) does its translation here and nowhere else.

Providers raise only `UpstreamTimeout` or `UpstreamUnavailable` for transport failures; an upstream that answers
with an error status is a normal `UpstreamResponse` (the proxy decides whether to retry, fall back or relay it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.routing import Deployment


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt against one deployment."""

    deployment: Deployment
    # The OpenAI path below the API base, e.g. "chat/completions", "embeddings", "responses".
    endpoint: str
    # The request body the upstream will see: the client's JSON with `model` replaced by the upstream model.
    body: dict[str, Any]
    # `body` serialised; providers that speak the OpenAI wire format send exactly these bytes.
    raw_body: bytes
    stream: bool
    # Extra headers to send upstream (W3C trace context, request id). Never the client's credentials.
    headers: Mapping[str, str] = field(default_factory=dict)


class UpstreamResponse(Protocol):
    status: int
    # Lower-cased header names.
    headers: Mapping[str, str]

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive (for SSE, whole events or fragments of them)."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def close(self) -> None:
        """Release the connection; for a stream still running, abort it (which cancels the upstream call)."""
        ...


class Provider(Protocol):
    # The `gen_ai.provider.name` value of this provider (e.g. "openai", "anthropic").
    name: str

    async def send(self, call: UpstreamCall) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class BufferedResponse:
    """An `UpstreamResponse` over bytes already in memory or produced by a generator (mock, translation)."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    closed: bool = False

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        stream = self.stream
        if stream is None:
            if self.body:
                yield self.body
            return
        try:
            async for chunk in stream:
                yield chunk
                if self.closed:
                    break
        finally:
            # Runs the generator's own cleanup (its `finally`), as aborting a connection would.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def read(self) -> bytes:
        if self.stream is None:
            return self.body
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def close(self) -> None:
        self.closed = True
