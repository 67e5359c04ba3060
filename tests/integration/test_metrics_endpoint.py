"""The gateway's /metrics, read from a real process (`tollgate serve`) in front of the fake upstream: the GenAI
histograms' bucket boundaries, requests, cost, attempts, retries and fallbacks, bounded labels, and who may read it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.attributes import DURATION_BUCKETS, TOKEN_USAGE_BUCKETS
from support.fake_openai import FakeOpenAI, Reply
from support.gateway import RunningGateway, gateway_process
from support.threads import free_port

UPSTREAM_MODEL = "gpt-4o-mini"
SERVER_ERROR = Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}})
# Every label the gateway's own families may carry: bounded sets (policy names, teams, models, statuses).
ALLOWED_LABELS = {
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_token_type",
    "error_type",
    "team",
    "status",
    "alias",
    "model",
    "deployment",
    "outcome",
    "le",
}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def policy(upstream: str, dead: str) -> str:
    fake = f"provider: openai, api_base: '{upstream}', model: {UPSTREAM_MODEL}"
    return f"""
defaults: {{timeout: 10, retries: 1}}
models:
  - alias: gpt-test
    deployments:
      - {{name: fake, {fake}}}
  - alias: gpt-fallback
    deployments:
      - {{name: dead-primary, provider: openai, api_base: '{dead}', weight: 1, retries: 0}}
      - {{name: fake-backup, {fake}, weight: 0}}
"""


@dataclass
class Stack:
    fake: FakeOpenAI
    gateway: RunningGateway

    def metrics_text(self) -> str:
        response = httpx.get(
            self.gateway.url + "/metrics", headers={"Authorization": f"Bearer {self.gateway.admin_key}"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    def scrape(self) -> Series:
        series: Series = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                series[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return series

    def chat(self, key: str, **body: Any) -> httpx.Response:
        payload = {"model": "gpt-test", "messages": [{"role": "user", "content": "count these four words"}], **body}
        return httpx.post(
            self.gateway.url + "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("metrics")
    with FakeOpenAI.running() as fake:
        policy_path = data / "policy.yaml"
        policy_path.write_text(policy(fake.base_url, f"http://127.0.0.1:{free_port()}/v1"))
        # No OTEL_* endpoint: metrics do not depend on tracing.
        with gateway_process(policy_path, data, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) as process:
            yield Stack(fake, process.gateway)


def value(series: Series, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def new_team(stack: Stack) -> tuple[str, str]:
    team = f"team-{secrets.token_hex(4)}"
    return team, stack.gateway.create_key(team)


# -- histograms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "buckets"),
    [
        ("gen_ai_client_token_usage", TOKEN_USAGE_BUCKETS),
        ("gen_ai_client_operation_duration_seconds", DURATION_BUCKETS),
    ],
)
def test_genai_histograms_use_the_semconv_bucket_boundaries(
    stack: Stack, family: str, buckets: tuple[float, ...]
) -> None:
    _, key = new_team(stack)
    assert stack.chat(key).status_code == 200
    series = stack.scrape()
    bounds: dict[frozenset[tuple[str, str]], list[float]] = {}
    for (name, labels), _ in series.items():
        if name == f"{family}_bucket":
            le = dict(labels)["le"]
            bounds.setdefault(labels - {("le", le)}, []).append(float(le))
    assert bounds, f"no {family}_bucket samples"
    for labels, les in bounds.items():
        assert sorted(les) == [*map(float, buckets), float("inf")], dict(labels)
    assert value(series, f"{family}_count", gen_ai_operation_name="chat", gen_ai_provider_name="openai") > 0


def test_token_usage_is_recorded_per_team_and_token_type(stack: Stack) -> None:
    team, key = new_team(stack)
    for _ in range(2):
        assert stack.chat(key).status_code == 200
    series = stack.scrape()
    name = "gen_ai_client_token_usage"
    # As on the CLIENT span, the requested model is the one the upstream was asked for, not the alias.
    labels = {"team": team, "gen_ai_request_model": UPSTREAM_MODEL, "gen_ai_operation_name": "chat"}
    # The fake reports 11 prompt tokens and one completion token per word it echoes.
    assert value(series, f"{name}_sum", gen_ai_token_type="input", **labels) == 22
    assert value(series, f"{name}_sum", gen_ai_token_type="output", **labels) == 8
    assert value(series, f"{name}_count", gen_ai_token_type="input", **labels) == 2
    assert value(series, f"{name}_bucket", gen_ai_token_type="input", le="16.0", **labels) == 2
    assert value(series, f"{name}_bucket", gen_ai_token_type="input", le="4.0", **labels) == 0


def test_time_to_first_chunk_is_observed_for_streamed_calls_only(stack: Stack) -> None:
    _, key = new_team(stack)
    name = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    before = value(stack.scrape(), name, gen_ai_request_model=UPSTREAM_MODEL)
    assert stack.chat(key).status_code == 200
    assert value(stack.scrape(), name, gen_ai_request_model=UPSTREAM_MODEL) == before
    with httpx.stream(
        "POST",
        stack.gateway.url + "/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        response.read()
    assert value(stack.scrape(), name, gen_ai_request_model=UPSTREAM_MODEL) == before + 1


# -- counters -------------------------------------------------------------------------------------------------------


def test_requests_are_counted_by_status_alias_and_team(stack: Stack) -> None:
    team, key = new_team(stack)
    stack.fake.enqueue(Reply(status=400, body={"error": {"message": "bad", "type": "invalid_request_error"}}))
    assert stack.chat(key).status_code == 400
    assert stack.chat(key).status_code == 200
    assert stack.chat(key).status_code == 200
    series = stack.scrape()
    assert value(series, "tollgate_requests_total", status="200", alias="gpt-test", team=team) == 2
    assert value(series, "tollgate_requests_total", status="400", alias="gpt-test", team=team) == 1
    assert value(series, "tollgate_requests_total", team=team) == 3


def test_cost_is_counted_by_team_and_model(stack: Stack) -> None:
    team, key = new_team(stack)
    costs = []
    for _ in range(3):
        response = stack.chat(key)
        assert response.status_code == 200
        costs.append(float(response.headers["x-tollgate-cost-usd"].lstrip("$")))
    series = stack.scrape()
    total = value(series, "tollgate_cost_usd_total", team=team, model=UPSTREAM_MODEL)
    assert total > 0
    # The header is rounded to six decimals; the counter is not.
    assert abs(total - sum(costs)) <= 3 * 5e-7
    assert value(series, "tollgate_cost_usd_total", team=team) == total


def test_retry_counter_moves_on_a_retry(stack: Stack) -> None:
    _, key = new_team(stack)
    before = stack.scrape()
    stack.fake.enqueue(SERVER_ERROR)
    assert stack.chat(key).status_code == 200
    after = stack.scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tollgate_upstream_retries_total", deployment="fake") == 1
    assert moved("tollgate_upstream_fallbacks_total") == 0
    assert moved("tollgate_upstream_attempts_total", deployment="fake", outcome="500") == 1
    assert moved("tollgate_upstream_attempts_total", deployment="fake", outcome="ok") == 1


def test_fallback_counter_moves_on_a_fallback(stack: Stack) -> None:
    _, key = new_team(stack)
    before = stack.scrape()
    assert stack.chat(key, model="gpt-fallback").status_code == 200
    after = stack.scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tollgate_upstream_fallbacks_total", alias="gpt-fallback") == 1
    assert moved("tollgate_upstream_retries_total") == 0
    assert moved("tollgate_upstream_attempts_total", deployment="dead-primary", outcome="UpstreamUnavailable") == 1
    assert moved("tollgate_upstream_attempts_total", deployment="fake-backup", outcome="ok") == 1


def test_each_upstream_attempt_is_counted_once(stack: Stack) -> None:
    _, key = new_team(stack)
    before = stack.scrape()
    stack.fake.enqueue(SERVER_ERROR, SERVER_ERROR)
    assert stack.chat(key).status_code == 500  # two attempts (retries: 1), both answered 500
    after = stack.scrape()
    attempts = value(after, "tollgate_upstream_attempts_total") - value(before, "tollgate_upstream_attempts_total")
    assert attempts == 2


# -- labels ---------------------------------------------------------------------------------------------------------


def test_no_request_ids_user_ids_or_keys_in_labels(stack: Stack) -> None:
    team, key = new_team(stack)
    user = f"end-user-{secrets.token_hex(6)}"
    response = stack.chat(key, user=user, metadata={"session": user})
    assert response.status_code == 200
    stack.fake.enqueue(SERVER_ERROR, SERVER_ERROR)
    failed = stack.chat(key, user=user)
    assert failed.status_code == 500
    ids = [r.headers[h] for r in (response, failed) for h in ("x-request-id", "x-tollgate-trace-id")]
    text = stack.metrics_text()
    for forbidden in [user, key, key.removeprefix("tg-"), *ids]:
        assert forbidden not in text
    own = {
        name
        for family in text_string_to_metric_families(text)
        if family.name.startswith(("gen_ai_", "tollgate_"))
        for sample in family.samples
        for name in sample.labels
    }
    assert own <= ALLOWED_LABELS, own - ALLOWED_LABELS
    assert team in text  # teams are the point


# -- access ---------------------------------------------------------------------------------------------------------


def test_metrics_need_the_admin_key_when_one_is_set(stack: Stack) -> None:
    url = stack.gateway.url + "/metrics"
    _, key = new_team(stack)
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-the-admin-key-at-all"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 401  # a virtual key is not enough
    assert httpx.get(url, headers={"Authorization": f"Bearer {stack.gateway.admin_key}"}).status_code == 200


def test_metrics_are_public_when_configured(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy(fake_openai.base_url, f"http://127.0.0.1:{free_port()}/v1"))
    with gateway_process(policy_path, tmp_path, {"TOLLGATE_METRICS_PUBLIC": "true"}) as process:
        response = httpx.get(process.gateway.url + "/metrics")
        assert response.status_code == 200
        assert "# TYPE tollgate_requests_total counter" in response.text
        # Only /metrics opens up: the admin API still needs its key.
        assert httpx.get(process.gateway.url + "/admin/keys").status_code == 401
