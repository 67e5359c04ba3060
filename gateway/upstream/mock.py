"""A deterministic in-process model for demos and tests; its behaviour is chosen by the model name.

    mock/echo             answers with the last user message (a tool call when tools are given)
    mock/slow             the same, 50 ms per streamed chunk (0.5 s in all when not streamed)
    mock/error-NNN        answers with HTTP status NNN in OpenAI's error shape (429 carries Retry-After: 1)
    mock/drop-midstream   streams three chunks, then the connection drops
    mock/timeout          never answers within the deployment's timeout

Usage counts words, not tokens: it is deterministic and needs no tokenizer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.exceptions import UpstreamTimeout, UpstreamUnavailable, error_body
from gateway.protocol.sse import DONE, encode_event
from gateway.upstream.base import BufferedResponse, UpstreamCall

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _behaviour(model: str) -> str:
    return model.rsplit("/", 1)[-1]


class MockProvider:
    name = "mock"

    async def send(self, call: UpstreamCall) -> BufferedResponse:
        behaviour = _behaviour(str(call.body.get("model", "echo")))
        if behaviour.startswith("error-"):
            return self._error(behaviour)
        if behaviour == "timeout":
            await asyncio.sleep(call.deployment.timeout)
            raise UpstreamTimeout(f"The upstream of deployment {call.deployment.name!r} timed out.")
        if behaviour == "drop-midstream" and not call.stream:
            raise UpstreamUnavailable(f"The upstream of deployment {call.deployment.name!r} closed the connection.")
        delay = 0.05 if behaviour == "slow" else 0.0
        if call.endpoint == "embeddings":
            return BufferedResponse(200, _JSON, orjson.dumps(self._embeddings(call.body)))
        if call.endpoint == "chat/completions":
            choices, prompt_tokens = self._chat_choices(call.body)
            kind = "chat.completion"
        elif call.endpoint == "completions":
            choices, prompt_tokens = self._text_choices(call.body)
            kind = "text_completion"
        else:
            return BufferedResponse(
                404, _JSON, error_body(f"The mock provider does not serve /{call.endpoint}.", "invalid_request_error")
            )
        response_id = "mock-" + hashlib.sha256(call.raw_body).hexdigest()[:24]
        if call.stream:
            stream = self._stream(call, behaviour, kind, response_id, choices, prompt_tokens, delay)
            return BufferedResponse(200, _SSE, stream=stream)
        if delay:
            await asyncio.sleep(delay * 10)
        completion_tokens = sum(_words(c["text"]) + 3 * len(c["tool_calls"]) for c in choices)
        body = {
            "id": response_id,
            "object": kind,
            "created": int(time.time()),
            "model": call.body["model"],
            "choices": [self._final_choice(kind, index, c) for index, c in enumerate(choices)],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return BufferedResponse(200, _JSON, orjson.dumps(body))

    async def aclose(self) -> None:
        return None

    @staticmethod
    def _error(behaviour: str) -> BufferedResponse:
        try:
            status = int(behaviour.removeprefix("error-"))
        except ValueError:
            status = 500
        if not 400 <= status <= 599:
            status = 500
        headers = dict(_JSON)
        if status == 429:
            headers["retry-after"] = "1"
        kind = "rate_limit_error" if status == 429 else ("api_error" if status >= 500 else "invalid_request_error")
        return BufferedResponse(
            status, headers, error_body(f"mock upstream error {status}", kind, code=f"mock_{status}")
        )

    @staticmethod
    def _chat_choices(body: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        messages = body.get("messages", [])
        prompt_tokens = sum(_words(_text_of(m.get("content"))) + 3 for m in messages)
        last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tools = body.get("tools") or []
        tool_calls: list[dict[str, Any]] = []
        if tools and body.get("tool_choice") != "none":
            function = tools[0].get("function", {})
            tool_calls = [
                {
                    "id": "call_mock_0",
                    "type": "function",
                    "function": {
                        "name": function.get("name", "tool"),
                        "arguments": orjson.dumps({"input": last_user}).decode(),
                    },
                }
            ]
            prompt_tokens += sum(_words(orjson.dumps(t).decode()) for t in tools)
        n = int(body.get("n") or 1)
        text = "" if tool_calls else (last_user or "(no user message)")
        return [{"text": text, "tool_calls": tool_calls} for _ in range(n)], prompt_tokens

    @staticmethod
    def _text_choices(body: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(str(p) for p in prompt)
        n = int(body.get("n") or 1)
        return [{"text": text, "tool_calls": []} for _ in range(n)], _words(text)

    @staticmethod
    def _final_choice(kind: str, index: int, choice: dict[str, Any]) -> dict[str, Any]:
        finish = "tool_calls" if choice["tool_calls"] else "stop"
        if kind == "text_completion":
            return {"index": index, "text": choice["text"], "finish_reason": finish, "logprobs": None}
        message: dict[str, Any] = {"role": "assistant", "content": choice["text"] or None, "refusal": None}
        if choice["tool_calls"]:
            message["tool_calls"] = choice["tool_calls"]
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}

    @staticmethod
    async def _stream(
        call: UpstreamCall,
        behaviour: str,
        kind: str,
        response_id: str,
        choices: list[dict[str, Any]],
        prompt_tokens: int,
        delay: float,
    ) -> AsyncIterator[bytes]:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
        base = {"id": response_id, "object": chunk_kind, "created": int(time.time()), "model": call.body["model"]}

        def event(choice: dict[str, Any]) -> bytes:
            return encode_event({**base, "choices": [choice]})

        sent = 0
        completion_tokens = 0
        for index, choice in enumerate(choices):
            if kind == "chat.completion":
                yield event({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            for call_index, tool_call in enumerate(choice["tool_calls"]):
                delta = {"tool_calls": [{"index": call_index, **tool_call}]}
                completion_tokens += 3
                yield event({"index": index, "delta": delta, "finish_reason": None})
            for word in choice["text"].split(" ") if choice["text"] else []:
                piece = word if sent == 0 else " " + word
                if kind == "chat.completion":
                    yield event({"index": index, "delta": {"content": piece}, "finish_reason": None})
                else:
                    yield event({"index": index, "text": piece, "finish_reason": None})
                sent += 1
                completion_tokens += 1 if word else 0
                if behaviour == "drop-midstream" and sent == 3:
                    raise UpstreamUnavailable(
                        f"The upstream of deployment {call.deployment.name!r} dropped the stream."
                    )
                if delay:
                    await asyncio.sleep(delay)
            sent = 0
            finish = "tool_calls" if choice["tool_calls"] else "stop"
            if kind == "chat.completion":
                yield event({"index": index, "delta": {}, "finish_reason": finish})
            else:
                yield event({"index": index, "text": "", "finish_reason": finish})
        if behaviour == "drop-midstream":
            raise UpstreamUnavailable(f"The upstream of deployment {call.deployment.name!r} dropped the stream.")
        options = call.body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            yield encode_event({**base, "choices": [], "usage": usage})
        yield DONE

    @staticmethod
    def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or 8)
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            tokens += max(1, _words(text))
            digest = hashlib.sha256(text.encode()).digest()
            raw = [(digest[i % len(digest)] - 127.5) for i in range(dims)]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vector = [v / norm for v in raw]
            embedding: list[float] | str = vector
            if body.get("encoding_format") == "base64":
                # The OpenAI SDK asks for base64 by default: little-endian float32, as OpenAI sends it.
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
