"""Cost is exact Decimal arithmetic on litellm's price map; expected values are computed here from the raw JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.pricing import (
    FREE,
    Price,
    PriceBook,
    compute_cost,
    cost_or_none,
    format_usd,
    litellm_price_map,
)
from gateway.accounting.usage import Usage

MAP_PATH = litellm_price_map()
pytestmark = pytest.mark.skipif(MAP_PATH is None, reason="litellm (the price map) is not installed")


@pytest.fixture(scope="module")
def raw_map() -> dict[str, Any]:
    assert MAP_PATH is not None
    data: dict[str, Any] = json.loads(Path(MAP_PATH).read_text("utf-8"), parse_float=Decimal)
    return data


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.from_litellm()


def rate(raw_map: dict[str, Any], key: str, field: str, default: str | None = None) -> Decimal:
    value = raw_map[key].get(field, default if default is None else raw_map[key][default])
    return Decimal(value)


# (model as routed, provider, map key, usage)
TABLE = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini", Usage(1200, 1024, 350, 0)),
    ("gpt-4o", "openai", "gpt-4o", Usage(5000, 0, 800, 0)),
    ("gpt-4o", None, "gpt-4o", Usage(7, 0, 3, 0)),
    ("openai/gpt-4o-mini", None, "gpt-4o-mini", Usage(10, 0, 10, 0)),
    ("o3-mini", "openai", "o3-mini", Usage(2000, 512, 1500, 1200)),
    ("o1", "openai", "o1", Usage(900, 0, 4000, 3500)),
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5", Usage(30000, 25000, 700, 0)),
    ("anthropic/claude-sonnet-4-5", None, "claude-sonnet-4-5", Usage(1, 0, 1, 0)),
    (
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "bedrock",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        Usage(4000, 1000, 900, 0),
    ),
    ("text-embedding-3-small", "openai", "text-embedding-3-small", Usage(8191, 0, 0, 0)),
    ("gpt-4o-mini", "azure", "azure/gpt-4o-mini", Usage(100, 0, 100, 0)),
    ("gpt-3.5-turbo-instruct", "openai", "gpt-3.5-turbo-instruct", Usage(50, 0, 20, 0)),
    ("dashscope/qwen-turbo", None, "dashscope/qwen-turbo", Usage(1000, 0, 1000, 600)),
]


@pytest.mark.parametrize(("model", "provider", "key", "usage"), TABLE)
def test_cost_matches_the_price_map(
    book: PriceBook, raw_map: dict[str, Any], model: str, provider: str | None, key: str, usage: Usage
) -> None:
    entry = raw_map[key]
    input_rate = Decimal(entry["input_cost_per_token"])
    cached_rate = Decimal(entry.get("cache_read_input_token_cost", entry["input_cost_per_token"]))
    output_rate = Decimal(entry["output_cost_per_token"])
    reasoning_rate = Decimal(entry.get("output_cost_per_reasoning_token", entry["output_cost_per_token"]))
    expected = (
        (usage.input_tokens - usage.cached_input_tokens) * input_rate
        + usage.cached_input_tokens * cached_rate
        + (usage.output_tokens - usage.reasoning_tokens) * output_rate
        + usage.reasoning_tokens * reasoning_rate
    )
    price = book.lookup(model, provider)
    assert price is not None
    assert compute_cost(usage, price) == expected
    assert cost_or_none(usage, price) == expected


def test_worked_examples_by_hand(book: PriceBook) -> None:
    # gpt-4o-mini: $0.15 / 1M input, $0.075 / 1M cached input, $0.60 / 1M output.
    price = book.lookup("gpt-4o-mini", "openai")
    assert price is not None
    assert compute_cost(Usage(1200, 1024, 350, 0), price) == Decimal("0.0003132")  # 176×.15 + 1024×.075 + 350×.6
    # o3-mini: $1.10 in, $0.55 cached, $4.40 out; reasoning tokens are output tokens, billed once at the output rate.
    price = book.lookup("o3-mini", "openai")
    assert price is not None
    assert compute_cost(Usage(2000, 512, 1500, 1200), price) == Decimal("0.0085184")  # 1488×1.1 + 512×.55 + 1500×4.4
    # qwen-turbo bills reasoning at its own rate: 400 × 2e-7 + 600 × 5e-7 + 1000 × 5e-8.
    price = book.lookup("dashscope/qwen-turbo")
    assert price is not None
    assert price.reasoning != price.output
    assert compute_cost(Usage(1000, 0, 1000, 600), price) == Decimal("0.00043")


def test_costs_are_exact_decimals(book: PriceBook) -> None:
    price = book.lookup("gpt-4o-mini", "openai")
    assert price is not None
    assert price.input == Decimal("1.5E-7")
    assert price.cached_input == Decimal("7.5E-8")
    one_token = compute_cost(Usage(1, 0, 0, 0), price)
    assert sum([one_token] * 100_000, Decimal(0)) == Decimal("0.015")
    assert sum([1.5e-7] * 100_000) != 0.015  # what floats would have done


def test_unknown_models_are_unpriced_not_free(book: PriceBook) -> None:
    assert book.lookup("no-such-model-xyz") is None
    assert book.lookup("no-such-model-xyz", "openai") is None
    assert cost_or_none(Usage(10, 0, 10, 0), None) is None
    assert format_usd(None) == "unpriced"


def test_a_model_is_not_priced_as_another_providers(book: PriceBook) -> None:
    assert book.lookup("claude-sonnet-4-5", "openai") is None
    assert book.lookup("gpt-4o-mini", "mock") is None
    assert book.lookup("gpt-4o-mini", "anthropic") is None


def test_non_token_entries_are_skipped(book: PriceBook, raw_map: dict[str, Any]) -> None:
    image_models = [key for key, entry in raw_map.items() if entry.get("mode") == "image_generation"]
    assert image_models
    assert all(book.lookup(key) is None for key in image_models[:20])
    assert book.lookup("sample_spec") is None


def test_overrides_win_and_self_hosted_models_can_be_free(book: PriceBook) -> None:
    custom = Price.per_million(1, 2, cached_input="0.5")
    priced = book.with_overrides({"gpt-4o-mini": custom, "smollm2": FREE, "vllm/llama-3-8b": Price.per_token("1e-8")})
    usage = Usage(1_000_000, 200_000, 1_000_000, 0)
    assert priced.lookup("gpt-4o-mini", "openai") is custom
    assert compute_cost(usage, custom) == Decimal("2.9")
    free = priced.lookup("smollm2", "openai")
    assert free is FREE
    assert compute_cost(usage, free) == Decimal("0")
    assert priced.lookup("llama-3-8b", "vllm") == Price.per_token("1e-8", 0)
    assert priced.lookup("unknown-model", "openai") is None
    # The book it came from is unchanged.
    assert book.lookup("smollm2", "openai") is None


def test_per_million_and_per_token_agree() -> None:
    assert Price.per_million(0.15, 0.6) == Price.per_token("0.00000015", "0.0000006")
    assert Price.per_million("0.15", "0.6", cached_input="0.075", reasoning=3).reasoning == Decimal("0.000003")
    price = Price.per_token(1, 2)
    assert price.cached_input == price.input
    assert price.reasoning == price.output


@pytest.mark.parametrize("bad", [Decimal("-1"), Decimal("NaN"), Decimal("Infinity")])
def test_invalid_rates_are_rejected(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="price input"):
        Price.per_token(bad, 0)
    with pytest.raises(TypeError):
        Price.per_token(True, 0)


def test_cached_and_reasoning_counts_never_exceed_their_totals() -> None:
    price = Price.per_token(1, 10, cached_input=0, reasoning=100)
    assert compute_cost(Usage(5, 9, 2, 7), price) == Decimal(0 * 5 + 100 * 2)


def test_a_map_parsed_from_text_keeps_every_digit() -> None:
    data = json.dumps(
        {
            "exact": {"input_cost_per_token": 1e-07, "output_cost_per_token": 3.0000000000000004e-07, "mode": "chat"},
            "bad-rate": {"input_cost_per_token": "1e-7", "output_cost_per_token": 1e-7, "mode": "chat"},
            "no-output": {"input_cost_per_token": 1e-7, "mode": "chat"},
            "embedding": {"input_cost_per_token": 2e-8, "mode": "embedding"},
            "not-a-dict": [],
        }
    )
    book = PriceBook.from_json(data)
    exact = book.lookup("exact")
    assert exact is not None
    assert exact.output == Decimal("3.0000000000000004E-7")
    assert book.lookup("bad-rate") is None
    assert book.lookup("no-output") is None
    assert book.lookup("embedding") == Price.per_token("2e-8", 0)
    assert len(book) == 2


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.0003132"), "$0.000313"),
        (Decimal("0.0000005"), "$0.000001"),
        (Decimal("1234.5"), "$1,234.500000"),
        (Decimal("0"), "$0.000000"),
    ],
)
def test_format_usd(amount: Decimal, text: str) -> None:
    assert format_usd(amount) == text


def test_format_usd_places() -> None:
    assert format_usd(Decimal("12.345"), places=2) == "$12.35"
