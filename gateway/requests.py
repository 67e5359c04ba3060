"""Reading what an ASGI request carries."""

from __future__ import annotations

from gateway.exceptions import RequestTooLarge
from gateway.types import Receive, Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header by lower-case name (ASGI servers lower-case them)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        return bytes(body)
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)
