"""Prometheus metrics, each in its own registry so two gateways in one process never share counters.

Label values are bounded: aliases and deployments come from the policy, teams from issued keys, models from
upstream answers that succeeded; never request ids or end-user ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.telemetry.attributes import DURATION_BUCKETS, TOKEN_USAGE_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFC_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(frozen=True, slots=True)
class CallSeries:
    """The labelled children one call updates, looked up once per label combination rather than per call."""

    requests: Any
    duration: Any
    time_to_first_chunk: Any
    input_tokens: Any
    output_tokens: Any
    cost: Any
    unpriced: Any


class Metrics:
    def __init__(self) -> None:
        self._series: dict[tuple[str, ...], CallSeries] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per operation (gen_ai.client.token.usage)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type", "team"],
            buckets=TOKEN_USAGE_BUCKETS,
            registry=r,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of an upstream operation, to the last byte (gen_ai.client.operation.duration)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the request to the first streamed chunk",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"],
            buckets=TTFC_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "tollgate_requests", "Proxied requests by response status", ["status", "alias", "team"], registry=r
        )
        self.cost = Counter("tollgate_cost_usd", "Cost of upstream calls in US dollars", ["team", "model"], registry=r)
        self.unpriced = Counter(
            "tollgate_unpriced_requests", "Requests whose model has no price", ["team", "model"], registry=r
        )
        self.attempts = Counter(
            "tollgate_upstream_attempts", "Upstream attempts by outcome", ["deployment", "outcome"], registry=r
        )
        self.retries = Counter("tollgate_upstream_retries", "Retries on one deployment", ["deployment"], registry=r)
        self.fallbacks = Counter(
            "tollgate_upstream_fallbacks", "Fallbacks to the next deployment", ["alias"], registry=r
        )
        self.journal_lag = Gauge(
            "tollgate_ledger_journal_lag", "Usage records journaled but not yet in the database", registry=r
        )
        self.refused = Counter(
            "tollgate_refused_requests",
            "Requests the gateway answered with an error before reaching an upstream (auth, validation, limits)",
            ["status"],
            registry=r,
        )
        self.ledger_healthy = Gauge("tollgate_ledger_healthy", "1 while the ledger writes to its database", registry=r)
        self.ledger_rejected = Gauge(
            "tollgate_ledger_rejected_records",
            "Usage records the database refused (kept in rejected.jsonl)",
            registry=r,
        )
        self.limits_healthy = Gauge(
            "tollgate_limits_healthy",
            "1 while shared counters (Redis) answer; 0 while counting per replica",
            registry=r,
        )
        self.span_drops = Counter(
            "tollgate_span_export_dropped", "Spans dropped because the export queue was full", registry=r
        )
        self.span_failures = Counter("tollgate_span_export_failures", "Spans the collector did not accept", registry=r)

    def call_series(
        self,
        operation: str,
        provider: str,
        request_model: str,
        team: str,
        alias: str,
        status: str,
        error_type: str,
        model: str,
    ) -> CallSeries:
        key = (operation, provider, request_model, team, alias, status, error_type, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = CallSeries(
                requests=self.requests.labels(status, alias, team),
                duration=self.operation_duration.labels(operation, provider, request_model, error_type),
                time_to_first_chunk=self.time_to_first_chunk.labels(operation, provider, request_model),
                input_tokens=self.token_usage.labels(operation, provider, request_model, "input", team),
                output_tokens=self.token_usage.labels(operation, provider, request_model, "output", team),
                cost=self.cost.labels(team, model),
                unpriced=self.unpriced.labels(team, model),
            )
        return series

    def render(self) -> bytes:
        return generate_latest(self.registry)
