"""A real Prometheus scrapes the gateway (a real process, /metrics made public for the scraper) and answers PromQL
about each team's tokens, requests and cost with the figures of the calls made through the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from support.fake_openai import FakeOpenAI
from support.gateway import RunningGateway, gateway_process
from support.prometheus import start_prometheus

POLICY = """
models:
  - alias: gpt-test
    deployments:
      - {{name: fake, provider: openai, api_base: '{upstream}', model: gpt-4o-mini}}
"""
PROMPT_TOKENS = 11  # what the fake reports for every chat call


def chat(gateway: RunningGateway, key: str, words: int) -> httpx.Response:
    text = " ".join(["word"] * words)  # the fake echoes it: one completion token per word
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def by_team(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {row["metric"]["team"]: float(row["value"][1]) for row in rows}


def test_prometheus_returns_each_teams_token_count_from_the_gateway(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY.format(upstream=fake_openai.base_url))
    with gateway_process(policy_path, tmp_path, {"TOLLGATE_METRICS_PUBLIC": "true"}) as process:
        gateway = process.gateway
        alpha, beta = gateway.create_key("prom-alpha"), gateway.create_key("prom-beta")
        alpha_words, beta_words = [3, 5, 8], [2]
        costs = {"prom-alpha": 0.0, "prom-beta": 0.0}
        for words in alpha_words:
            costs["prom-alpha"] += float(chat(gateway, alpha, words).headers["x-tollgate-cost-usd"].lstrip("$"))
        for words in beta_words:
            costs["prom-beta"] += float(chat(gateway, beta, words).headers["x-tollgate-cost-usd"].lstrip("$"))
        expected_tokens = {
            "prom-alpha": PROMPT_TOKENS * len(alpha_words) + sum(alpha_words),
            "prom-beta": PROMPT_TOKENS * len(beta_words) + sum(beta_words),
        }

        host_port = gateway.url.removeprefix("http://")
        with start_prometheus([host_port]) as prom:
            [target] = prom.wait_for_targets_up()
            assert target["scrapeUrl"] == f"{gateway.url}/metrics"

            query = 'sum by (team) (gen_ai_client_token_usage_sum{team=~"prom-.*"})'
            rows = prom.wait_for(query, lambda rows: by_team(rows) == expected_tokens)
            assert by_team(rows) == {"prom-alpha": 49.0, "prom-beta": 13.0}

            output = prom.value('sum(gen_ai_client_token_usage_sum{team="prom-alpha", gen_ai_token_type="output"})')
            assert output == sum(alpha_words)
            # Two observations per chat call: one of input tokens, one of output tokens.
            assert by_team(prom.query('sum by (team) (gen_ai_client_token_usage_count{team=~"prom-.*"})')) == {
                "prom-alpha": 6.0,
                "prom-beta": 2.0,
            }
            requests = prom.query('sum by (team) (tollgate_requests_total{status="200", alias="gpt-test"})')
            assert by_team(requests) == {"prom-alpha": 3.0, "prom-beta": 1.0}
            cost = by_team(prom.query('sum by (team) (tollgate_cost_usd_total{model="gpt-4o-mini"})'))
            for team, header_total in costs.items():
                assert cost[team] > 0
                assert abs(cost[team] - header_total) <= 3 * 5e-7  # headers are rounded to six decimals
