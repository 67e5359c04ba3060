"""A fake OpenAI-compatible server on a real socket, scripted per test.

By default it answers like OpenAI: chat completions (JSON or SSE, with usage when asked), completions and
embeddings, echoing the last user message. Tests queue `Reply` objects to make the next calls fail, stall, drop
or answer something specific, and read `requests` to see exactly what the gateway sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from support.threads import LoopThread, free_port


@dataclass
class Reply:
    """What the next request gets. Unset fields fall back to the default OpenAI-like answer."""

    status: int = 200
    body: Any = None  # a dict (sent as JSON) or bytes; None: the default answer for the endpoint
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    events: list[bytes] | None = None  # SSE events to send, one write each
    event_gap: float = 0.0
    drop_after: int | None = None  # close the connection after this many events


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str] = field(default_factory=dict)


def chat_completion(model: str, text: str, n: int = 1, prompt_tokens: int = 11) -> dict[str, Any]:
    completion_tokens = len(text.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
        },
    }


def chat_stream_events(model: str, text: str, include_usage: bool, prompt_tokens: int = 11) -> list[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**base, **payload}) + b"\n\n"

    words = text.split(" ")
    events = [event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        events.append(event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}))
    events.append(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        events.append(event({"choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return "hello"


class FakeOpenAI:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.streams_cancelled = 0
        self.streams_completed = 0
        self._lock = threading.Lock()
        self._loop = LoopThread()
        self._runner: web.AppRunner | None = None

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[FakeOpenAI]:
        server = cls()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def calls(self, path: str = "/v1/chat/completions") -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)

        async def start() -> None:
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run(start())

    def stop(self) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            Recorded(request.path, {k.lower(): v for k, v in request.headers.items()}, body, dict(request.query))
        )
        with self._lock:
            reply = self.script.popleft() if self.script else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200 or reply.body is not None:
            payload = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body or {})
            headers = {"Content-Type": "application/json", **reply.headers}
            return web.Response(status=reply.status, body=payload, headers=headers)
        body = body or {}
        if request.path.endswith("/embeddings"):
            inputs = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i, _ in enumerate(inputs)]
            usage = {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}
            return web.json_response({"object": "list", "data": data, "model": body.get("model"), "usage": usage})
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": []})
        model = str(body.get("model", "unknown"))
        text = _last_user_text(body)
        if reply.events is not None or body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = reply.events if reply.events is not None else chat_stream_events(model, text, include_usage)
            return await self._stream(request, events, reply)
        return web.json_response(chat_completion(model, text, int(body.get("n") or 1)), headers=reply.headers)

    async def _stream(self, request: web.Request, events: list[bytes], reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **reply.headers})
        await response.prepare(request)
        try:
            for index, event in enumerate(events):
                if reply.drop_after is not None and index >= reply.drop_after:
                    # Abort the TCP connection mid-body, as a crashing upstream would.
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(event)
                if reply.event_gap:
                    await asyncio.sleep(reply.event_gap)
            await response.write_eof()
            self.streams_completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_cancelled += 1
            raise
        return response
