"""OpenAI response shapes the gateway itself produces, as TypedDicts.

Requests are not typed here on purpose: the gateway validates the few fields it reads (`validation.py`) and passes
every other field through untouched, which a model of the request would drop or reject.
"""

from __future__ import annotations

from typing import Literal, TypedDict


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
