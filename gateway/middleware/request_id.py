"""Gives every request an id, returned as `x-request-id` on the response."""

from __future__ import annotations

import uuid

from gateway.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = "tollgate.request_id"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Our own id, never the client's: it keys ledger records, and a client must not be able to collide them.
        request_id = "req_" + uuid.uuid4().hex
        scope[REQUEST_ID] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
