"""Refuses request bodies over the limit with 413 before anything reads them."""

from __future__ import annotations

from gateway.exceptions import InvalidRequest, RequestTooLarge
from gateway.requests import header
from gateway.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise InvalidRequest("The Content-Length header is not a number.") from None
            if length > self.max_bytes:
                raise RequestTooLarge(f"The request body is larger than the limit of {self.max_bytes} bytes.")
            await self.app(scope, receive, send)
            return
        # Chunked upload: count as it arrives.
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLarge(f"The request body is larger than the limit of {self.max_bytes} bytes.")
            return message

        await self.app(scope, counting_receive, send)
