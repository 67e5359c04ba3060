"""OpenAI request and response shapes as TypedDicts.

They describe only the fields the gateway reads; every other field of a request passes through untouched,
which is why these are TypedDicts over plain dicts and not models that would drop what they don't know.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class ChatMessage(TypedDict, total=False):
    role: str
    content: str | list[dict[str, Any]] | None
    name: str
    tool_calls: list[dict[str, Any]]
    tool_call_id: str


class StreamOptions(TypedDict, total=False):
    include_usage: bool


class ChatCompletionRequest(TypedDict):
    model: str
    messages: list[ChatMessage]
    stream: NotRequired[bool]
    stream_options: NotRequired[StreamOptions]
    n: NotRequired[int]
    user: NotRequired[str]
    tools: NotRequired[list[dict[str, Any]]]


class CompletionRequest(TypedDict):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: NotRequired[bool]


class EmbeddingRequest(TypedDict):
    model: str
    input: str | list[str] | list[int] | list[list[int]]


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorDetail


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]
