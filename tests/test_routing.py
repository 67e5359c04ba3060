from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing import Deployment, ModelRoute, Router, alias_allowed, attempt_order


def deployment(name: str, weight: float = 1.0, model: str = "{alias}") -> Deployment:
    return Deployment(name=name, provider="mock", model=model, weight=weight)


def route(alias: str, *names: str) -> ModelRoute:
    return ModelRoute(alias=alias, deployments=tuple(deployment(n) for n in names or (alias,)))


def resolved_alias(router: Router, alias: str) -> str | None:
    found = router.resolve(alias)
    return found.alias if found is not None else None


def test_exact_alias_beats_a_pattern_listed_before_it() -> None:
    router = Router([route("gpt-*", "pattern"), route("gpt-4o", "exact")])

    assert resolved_alias(router, "gpt-4o") == "gpt-4o"
    assert resolved_alias(router, "gpt-4o-mini") == "gpt-*"


def test_first_matching_pattern_in_policy_order_wins() -> None:
    router = Router([route("gpt-4*", "first"), route("gpt-*", "second"), route("*", "catch-all")])

    assert resolved_alias(router, "gpt-4o-mini") == "gpt-4*"
    assert resolved_alias(router, "gpt-3.5-turbo") == "gpt-*"
    assert resolved_alias(router, "llama") == "*"


def test_patterns_match_case_sensitively_and_support_character_classes() -> None:
    router = Router([route("o[0-9]*", "reasoning")])

    assert router.resolve("o3-mini") is not None
    assert router.resolve("O3-mini") is None
    assert router.resolve("omni") is None


def test_unknown_alias_resolves_to_none() -> None:
    router = Router([route("gpt-4o"), route("claude-*")])

    assert router.resolve("mistral-large") is None
    assert router.resolve("") is None


def test_attempt_order_with_one_deployment_returns_it_even_with_weight_zero() -> None:
    only = deployment("only", weight=0)

    assert attempt_order([only], random.Random(1)) == [only]


def test_attempt_order_contains_every_deployment_exactly_once() -> None:
    deployments = [deployment("a", 3), deployment("b", 1), deployment("c", 0), deployment("d", 2.5), deployment("e", 0)]
    rng = random.Random(7)

    for _ in range(200):
        order = attempt_order(deployments, rng)
        assert sorted(d.name for d in order) == ["a", "b", "c", "d", "e"]


def test_attempt_order_puts_weight_zero_deployments_last_in_policy_order() -> None:
    deployments = [deployment("standby-1", 0), deployment("a", 1), deployment("standby-2", 0), deployment("b", 5)]
    rng = random.Random(11)

    for _ in range(200):
        order = [d.name for d in attempt_order(deployments, rng)]
        assert order[2:] == ["standby-1", "standby-2"]
        assert set(order[:2]) == {"a", "b"}


def test_attempt_order_chooses_the_primary_in_proportion_to_weights() -> None:
    deployments = [deployment("heavy", 3), deployment("light", 1)]
    rng = random.Random(1234)
    draws = 4000

    primaries = Counter(attempt_order(deployments, rng)[0].name for _ in range(draws))

    # Expected 3000 / 1000; the binomial standard deviation is ~27, so ±120 is more than 4 sigma.
    assert abs(primaries["heavy"] - 3000) < 120
    assert primaries["heavy"] + primaries["light"] == draws


def test_attempt_order_weights_the_fallbacks_too() -> None:
    deployments = [deployment("a", 1), deployment("b", 2), deployment("c", 1)]
    rng = random.Random(99)
    draws = 4000

    # Given a primary, the next one is drawn among the rest by weight: when "a" leads, "b" is second 2/3 of the time.
    seconds = Counter()
    for _ in range(draws):
        order = attempt_order(deployments, rng)
        if order[0].name == "a":
            seconds[order[1].name] += 1

    total = sum(seconds.values())
    assert total > 800
    assert abs(seconds["b"] / total - 2 / 3) < 0.06


def test_attempt_order_is_reproducible_with_the_same_seed() -> None:
    deployments = [deployment(n, w) for n, w in [("a", 1), ("b", 2), ("c", 3), ("d", 0)]]

    first = [[d.name for d in attempt_order(deployments, random.Random(5))] for _ in range(3)]

    assert first[0] == first[1] == first[2]


def test_upstream_model_substitutes_the_alias() -> None:
    assert deployment("d", model="{alias}").upstream_model("gpt-4o") == "gpt-4o"
    assert deployment("d", model="openai/{alias}-2024").upstream_model("gpt-4o") == "openai/gpt-4o-2024"
    assert deployment("d", model="fixed-model").upstream_model("gpt-4o") == "fixed-model"


def test_alias_allowed_without_restrictions_allows_everything() -> None:
    assert alias_allowed("anything/at-all", None)


@pytest.mark.parametrize(
    ("alias", "allowed"),
    [("gpt-4o", True), ("gpt-4o-mini", True), ("mock/echo", True), ("claude-3-5-sonnet", False), ("GPT-4o", False)],
)
def test_alias_allowed_matches_the_team_patterns(alias: str, allowed: bool) -> None:
    assert alias_allowed(alias, ["gpt-4o*", "mock/*"]) is allowed


def test_alias_allowed_with_an_empty_pattern_list_allows_nothing() -> None:
    assert not alias_allowed("gpt-4o", [])
