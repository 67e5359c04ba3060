"""Renders every error raised below it in OpenAI's error shape; the one place that does."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.exceptions import TollgateError, error_body, render_error
from gateway.responses import send_bytes
from gateway.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("tollgate.errors")


class ErrorMiddleware:
    def __init__(self, app: ASGIApp, on_error: Callable[[int], None] = lambda status: None) -> None:
        self.app = app
        # Told the status of every error this middleware renders (for the refused-requests metric).
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except TollgateError as exc:
            if started:
                logger.warning("error after the response started: %s", exc.message)
                return
            self.on_error(exc.status)
            headers = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
            await send_bytes(send, exc.status, render_error(exc), b"application/json", headers)
        except Exception:
            # The last line of defence: log with traceback, answer a generic 500 that leaks nothing.
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                self.on_error(500)
                body = error_body("The gateway failed to process the request.", "api_error", code="internal_error")
                await send_bytes(send, 500, body, b"application/json")
