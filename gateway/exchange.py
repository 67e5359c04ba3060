"""One proxied call's state as it moves through the steps, and the usage record it ends as."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Span

from gateway.accounting.records import Status, UsageRecord
from gateway.accounting.usage import Output, Usage
from gateway.keys.store import VirtualKey
from gateway.routing import Deployment, ModelRoute
from gateway.telemetry.content import CaptureRule
from gateway.telemetry.tracing import RequestTrace


@dataclass(slots=True)
class Exchange:
    request_id: str
    created_at: datetime
    started: float  # perf_counter at arrival
    key: VirtualKey
    endpoint: str
    alias: str
    route: ModelRoute
    stream: bool
    # The client's request as the gateway forwards it (model replaced per deployment at send time).
    body: dict[str, Any]
    trace: RequestTrace
    client_asked_usage: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    # Filled in as attempts are made.
    deployment: Deployment | None = None
    upstream_model: str = ""
    provider_name: str = ""
    attempt: int = 0
    attempt_span: Span | None = None
    # An attempt started and not yet ended (counted and its span closed exactly once, by end_attempt).
    attempt_open: bool = False
    first_chunk_at: float | None = None
    # Filled in at the end.
    usage: Usage | None = None
    cost: Decimal | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    http_status: int = 0
    status: Status = "ok"
    recorded: bool = False
    # Set when a policy rule puts this call's content on its span; `output` is then kept for it.
    capture: CaptureRule | None = None
    output: Output | None = None

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return (self.first_chunk_at - self.started) * 1000 if self.first_chunk_at is not None else None

    def record(self) -> UsageRecord:
        usage = self.usage or Usage()
        deployment = self.deployment
        return UsageRecord(
            request_id=self.request_id,
            created_at=self.created_at,
            team=self.key.team,
            key_id=self.key.id,
            alias=self.alias,
            provider=deployment.provider if deployment else "",
            upstream_model=self.response_model or self.upstream_model,
            deployment=deployment.name if deployment else "",
            endpoint=self.endpoint,
            status=self.status,
            http_status=self.http_status,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=self.cost,
            usage_source=usage.source if self.usage is not None else "none",
            latency_ms=round(self.latency_ms, 3),
            ttft_ms=round(ttft, 3) if (ttft := self.ttft_ms) is not None else None,
            trace_id=self.trace.trace_id_hex,
            user=self.user,
            tags=self.tags,
        )
