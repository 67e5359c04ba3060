"""The usage record: one per request that reached an upstream, the unit the ledger stores and reports sum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

# ok: the upstream answered 2xx and the client got it all; upstream_error: the upstream answered an error (or
# failed) after being reached; client_disconnected: the client left mid-response (tokens streamed so far billed);
# stream_broken: the upstream stream broke after it started.
Status = Literal["ok", "upstream_error", "client_disconnected", "stream_broken"]
UsageSource = Literal["reported", "estimated", "none"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    created_at: datetime  # UTC, when the request arrived
    team: str
    key_id: str
    alias: str
    provider: str
    upstream_model: str
    deployment: str
    endpoint: str  # "chat/completions", "embeddings", ...
    status: Status
    http_status: int
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    # None: the model has no price (reported as unpriced, never as $0).
    cost_usd: Decimal | None = None
    usage_source: UsageSource = "none"
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    trace_id: str | None = None
    user: str | None = None  # the OpenAI `user` field
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """One journal line. Decimal as a string so no digit is lost."""
        return orjson.dumps(
            {
                **{name: getattr(self, name) for name in self.__slots__},
                "created_at": self.created_at.isoformat(),
                "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
                "tags": dict(self.tags),
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> UsageRecord:
        data: dict[str, Any] = orjson.loads(line)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["cost_usd"] = Decimal(data["cost_usd"]) if data["cost_usd"] is not None else None
        return cls(**data)
