"""Prices and cost: exact `Decimal` arithmetic, pure functions.

Prices come from litellm's bundled price map (`model_prices_and_context_window_backup.json`), read as a file —
litellm is never imported and nothing is fetched — with numbers parsed from their JSON text straight into
`Decimal` (a float would turn 7.5e-08 into 7.49999999999999990e-08). Policy overrides price custom and
self-hosted models (possibly at 0) and win over the map. A model found nowhere has no price: its cost is `None`
and it is reported as unpriced, never as $0.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from gateway.accounting.usage import Usage

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
# Entries billed per token; image, audio-transcription, video, rerank... entries are priced per unit and skipped.
TOKEN_MODES = frozenset({"chat", "completion", "embedding", "responses"})
PER_MILLION = Decimal(1_000_000)

Rate = Decimal | int | str | float


def to_decimal(value: Rate) -> Decimal:
    """A rate as an exact Decimal; a float (YAML's `0.15`) goes through its shortest repr, i.e. as written."""
    if isinstance(value, bool):
        raise TypeError("a price cannot be a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token. Cached input defaults to the input rate, reasoning to the output rate."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output", "reasoning"):
            rate = getattr(self, name)
            if not isinstance(rate, Decimal) or not rate.is_finite() or rate < 0:
                raise ValueError(f"price {name} must be a finite, non-negative Decimal, got {rate!r}")

    @classmethod
    def per_token(
        cls, input: Rate, output: Rate = 0, *, cached_input: Rate | None = None, reasoning: Rate | None = None
    ) -> Price:
        input_rate, output_rate = to_decimal(input), to_decimal(output)
        return cls(
            input=input_rate,
            cached_input=input_rate if cached_input is None else to_decimal(cached_input),
            output=output_rate,
            reasoning=output_rate if reasoning is None else to_decimal(reasoning),
        )

    @classmethod
    def per_million(
        cls, input: Rate, output: Rate = 0, *, cached_input: Rate | None = None, reasoning: Rate | None = None
    ) -> Price:
        """From USD per million tokens, the unit price lists use."""
        return cls.per_token(
            to_decimal(input) / PER_MILLION,
            to_decimal(output) / PER_MILLION,
            cached_input=None if cached_input is None else to_decimal(cached_input) / PER_MILLION,
            reasoning=None if reasoning is None else to_decimal(reasoning) / PER_MILLION,
        )


FREE = Price.per_token(0, 0)


def compute_cost(usage: Usage, price: Price) -> Decimal:
    """Exact cost in USD (nothing is rounded).

    Cached input tokens are part of input tokens and reasoning tokens part of output tokens (OpenAI's usage):
    each is billed once, at its own rate, and the rest at the plain rate.
    """
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    return (
        (usage.input_tokens - cached) * price.input
        + cached * price.cached_input
        + (usage.output_tokens - reasoning) * price.output
        + reasoning * price.reasoning
    )


def cost_or_none(usage: Usage, price: Price | None) -> Decimal | None:
    """The cost, or None for an unpriced model (recorded and reported as unpriced, never as $0)."""
    return None if price is None else compute_cost(usage, price)


def format_usd(amount: Decimal | None, places: int = 6) -> str:
    """For people: `$0.000123`, `$1,234.50`-style grouping, `unpriced` for None. Storage keeps the exact value."""
    if amount is None:
        return "unpriced"
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"-${-rounded:,.{places}f}" if rounded < 0 else f"${rounded:,.{places}f}"


def _same_provider(provider: str, listed: str) -> bool:
    """Whether a gateway provider kind names litellm's `litellm_provider` (openai ~ text-completion-openai,
    bedrock ~ bedrock_converse, vertex_ai ~ vertex_ai-language-models)."""
    return listed == provider or listed.startswith((provider + "_", provider + "-")) or listed.endswith("-" + provider)


def _entry_price(entry: Mapping[str, Any]) -> Price | None:
    mode = entry.get("mode")
    if mode is not None and mode not in TOKEN_MODES:
        return None
    rates = {
        "input": entry.get("input_cost_per_token"),
        "output": entry.get("output_cost_per_token", 0 if mode == "embedding" else None),
        "cached_input": entry.get("cache_read_input_token_cost"),
        "reasoning": entry.get("output_cost_per_reasoning_token"),
    }
    if rates["input"] is None or rates["output"] is None:
        return None
    if any(isinstance(rate, bool) or not isinstance(rate, Decimal | int | None) for rate in rates.values()):
        return None
    try:
        return Price.per_token(**rates)
    except ValueError:
        return None


class PriceBook:
    """Prices by model, optionally qualified by provider, with overrides that win."""

    __slots__ = ("_overrides", "_prices", "source")

    def __init__(
        self,
        prices: Mapping[str, tuple[Price, str]] | None = None,
        overrides: Mapping[str, Price] | None = None,
        source: str | None = None,
    ) -> None:
        # model key → (price, litellm_provider)
        self._prices: dict[str, tuple[Price, str]] = dict(prices or {})
        self._overrides: dict[str, Price] = dict(overrides or {})
        self.source = source

    @classmethod
    def from_json(
        cls, data: bytes | str, overrides: Mapping[str, Price] | None = None, source: str | None = None
    ) -> PriceBook:
        # parse_float=Decimal builds each rate from its JSON text: exact. (orjson would give binary floats.)
        entries = json.loads(data, parse_float=Decimal)
        prices: dict[str, tuple[Price, str]] = {}
        if isinstance(entries, dict):
            for key, entry in entries.items():
                if not isinstance(entry, dict):
                    continue
                price = _entry_price(entry)
                if price is not None:
                    prices[key] = (price, str(entry.get("litellm_provider", "")))
        return cls(prices, overrides, source)

    @classmethod
    def from_file(cls, path: Path, overrides: Mapping[str, Price] | None = None) -> PriceBook:
        return cls.from_json(path.read_bytes(), overrides, source=str(path))

    @classmethod
    def from_litellm(cls, overrides: Mapping[str, Price] | None = None) -> PriceBook:
        """litellm's bundled map (blocking file I/O, ~50 ms: call at startup); overrides only without litellm."""
        path = litellm_price_map()
        if path is None:
            return cls(overrides=overrides)
        return cls.from_file(path, overrides)

    def with_overrides(self, overrides: Mapping[str, Price]) -> PriceBook:
        return PriceBook(self._prices, {**self._overrides, **overrides}, self.source)

    def __len__(self) -> int:
        return len(self._prices)

    def override(self, model: str, provider: str | None = None) -> Price | None:
        """The policy's own price for `provider/model` or `model`, if it sets one."""
        qualified = f"{provider}/{model}" if provider and not model.startswith(provider + "/") else None
        for key in (qualified, model):
            if key is not None and key in self._overrides:
                return self._overrides[key]
        return None

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The price of `model` as served by `provider` (a gateway provider kind such as "openai", "azure",
        "anthropic"), or None when unpriced.

        Tries, in order: an override for `provider/model` or `model`; the map's `provider/model` key; its `model`
        key if listed for that provider; and for `prefix/model`, the same again with the prefix as provider.
        """
        qualified = f"{provider}/{model}" if provider and not model.startswith(provider + "/") else None
        for key in (qualified, model):
            if key is not None and key in self._overrides:
                return self._overrides[key]
        if qualified is not None and qualified in self._prices:
            return self._prices[qualified][0]
        listed = self._prices.get(model)
        if listed is not None and (provider is None or _same_provider(provider, listed[1])):
            return listed[0]
        prefix, slash, rest = model.partition("/")
        if slash and rest and (provider is None or provider == prefix):
            return self.lookup(rest, prefix)
        return None


def litellm_price_map() -> Path | None:
    """litellm's bundled price map, located without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / PRICE_MAP_FILE
        if candidate.is_file():
            return candidate
    return None
