"""UTC calendar periods for budgets, and USD as the integer nano-dollars the counters hold."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from gateway.policy import Period

NANO = Decimal(10) ** 9
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class PeriodSpan:
    kind: Period
    id: str  # "2026-11-23" or "2026-11": part of the counter names
    start: datetime
    end: datetime


def period_span(kind: Period, now: float) -> PeriodSpan:
    """The UTC calendar day or month containing `now` (seconds since the epoch)."""
    moment = datetime.fromtimestamp(now, UTC)
    if kind == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return PeriodSpan("day", start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return PeriodSpan("month", start.strftime("%Y-%m"), start, end)


@functools.lru_cache(maxsize=4096)
def to_nano(amount: Decimal) -> int:
    """USD as integer nano-dollars, rounded up so the counters never undercount spend."""
    return int((amount * NANO).to_integral_value(ROUND_CEILING))


def from_nano(value: int) -> Decimal:
    return Decimal(value) / NANO


def format_usd(amount: Decimal) -> str:
    cents = amount.quantize(_CENT, ROUND_HALF_EVEN)
    if cents == amount or amount >= 1:
        return f"${cents:,.2f}"
    return f"${amount.normalize():f}"  # a $0.005 budget must not read "$0.01"
