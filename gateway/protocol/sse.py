"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def encode_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(message: str, type: str = "api_error", code: str | None = None) -> bytes:
    """The event the OpenAI SDK turns into an APIError when a stream fails after it started."""
    return encode_event({"error": {"message": message, "type": type, "param": None, "code": code}})


def _field_value(line: bytes) -> bytes:
    # The SSE spec removes exactly one space after the colon.
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


class EventSplitter:
    """Reassembles SSE events from arbitrary byte fragments.

    Feeds return complete `data:` payloads (without the prefix); comments, `event:` and `id:` lines are skipped.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        held = b""
        if buffer.endswith(b"\r") and not buffer.endswith(b"\r\r"):
            # A CRLF may be cut between its two bytes: keep the CR until we know what follows it. (After a CR pair
            # the event has ended whatever follows: a stray LF only adds a blank line, which SSE ignores.)
            buffer, held = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = buffer.split(b"\n\n")
        self._buffer = rest + held
        payloads = []
        for event in events:
            data = [_field_value(line) for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                payloads.append(b"\n".join(data))
        return payloads
