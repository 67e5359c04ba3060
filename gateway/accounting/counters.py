"""Counters behind budgets and rate limits: what a check is, and the in-process store.

Two kinds of counter, both plain integers:

- rate counters (`rpm`, `tpm`): one per owner and UTC minute. A check passes when `value + amount <= limit`, and
  then adds `amount`; a request that is refused adds nothing anywhere.
- spend counters (`budget`): nano-dollars per owner and UTC calendar period. A check passes while `value < limit`
  and adds nothing: spend is only known after the call, and `settle` adds it.

A spend counter that does not exist is never read as zero on its own: the ledger may hold spend for that period
that this store has not seen (a Redis restart, a fresh process). Each (owner kind, period) has a *seed marker*: set
once the store was raised to the ledger's totals for that period. A missing counter with its marker present really
is zero (the owner has not spent since the seeding, else settle would have created it) and is created as zero; a
missing counter without its marker is reported as unseeded, and the limiter seeds from the ledger and asks again.

`LocalCounters` (this module) and `RedisCounters` (`redis_counters.py`) implement the same `Counters` protocol
with the same semantics, so the limiter and its tests do not care which one answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.policy import Period

Metric = Literal["rpm", "tpm", "budget"]
Owner = Literal["team", "key"]
# How a settle step applies: "adjust" only touches a counter that still exists (a reservation's window that has
# expired needs no correction); "add" creates the counter if needed; "spend" follows the seeding rules above.
AdjustKind = Literal["adjust", "add", "spend"]


class CountersUnavailable(Exception):
    """The shared counter store could not be reached; the limiter falls back to in-process counters."""


@dataclass(frozen=True, slots=True)
class Check:
    metric: Metric
    owner: Owner
    owner_id: str
    key: str  # the counter's name, without any store prefix
    limit: int
    amount: int  # added on admission (rate counters); 0 for budgets
    ttl: int  # seconds the counter must outlive its window or period
    marker: str | None = None  # budgets: the seed marker of the counter's (owner kind, period)
    resets_at: float = 0.0  # when the window or period ends, seconds since the epoch: Retry-After's source
    period: Period = "month"  # budgets: which calendar period the counter covers

    @property
    def is_rate(self) -> bool:
        return self.metric != "budget"


@dataclass(frozen=True, slots=True)
class Adjustment:
    kind: AdjustKind
    key: str
    amount: int
    ttl: int
    marker: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    # (index into the checks, the counter's value) for every check that failed; empty when admitted.
    denied: tuple[tuple[int, int], ...] = ()
    # Index of a budget check whose period was never seeded from the ledger; nothing was added.
    unseeded: int | None = None
    # Indices of "spend" adjustments skipped because their period is unseeded (the others were applied).
    unsettled: tuple[int, ...] = ()

    @property
    def admitted(self) -> bool:
        return not self.denied and self.unseeded is None


ADMITTED = Outcome()


class Counters(Protocol):
    async def admit(self, checks: Sequence[Check], adjustments: Sequence[Adjustment] = ()) -> Outcome:
        """Applies the adjustments (requests settled since the last call), then checks every counter and, only
        when all pass, adds each rate check's amount: atomically, and with Redis in one round trip."""
        ...

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int, ...]:
        """Applies the adjustments alone; returns the indices of those skipped as unseeded (see `Outcome`)."""
        ...

    async def seed(self, marker: str, values: Mapping[str, int], ttl: int) -> None:
        """Raises each counter to at least its value (never adds), then sets the marker, all with the given ttl."""
        ...


@dataclass(slots=True)
class _Entry:
    value: int
    expires: float


class LocalCounters:
    """In-process counters, for one replica or while Redis is away. Atomic because nothing here awaits."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # Expired entries read as missing and are swept once a minute.
        self._values: dict[str, _Entry] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()

    def _get(self, key: str, now: float) -> _Entry | None:
        entry = self._values.get(key)
        if entry is None or entry.expires <= now:
            return None
        return entry

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        for key in [k for k, entry in self._values.items() if entry.expires <= now]:
            del self._values[key]

    async def admit(self, checks: Sequence[Check], adjustments: Sequence[Adjustment] = ()) -> Outcome:
        now = self._clock()
        self._sweep(now)
        unsettled = self._apply(adjustments, now)
        outcome = self._check(checks, now)
        return replace(outcome, unsettled=unsettled) if unsettled else outcome

    def _check(self, checks: Sequence[Check], now: float) -> Outcome:
        denied: list[tuple[int, int]] = []
        for i, check in enumerate(checks):
            entry = self._get(check.key, now)
            value = entry.value if entry is not None else 0
            if check.is_rate:
                if value + check.amount > check.limit:
                    denied.append((i, value))
                continue
            if entry is None:
                if check.marker is None or self._get(check.marker, now) is None:
                    return Outcome(unseeded=i)
                self._values[check.key] = _Entry(0, now + check.ttl)
            if value >= check.limit:
                denied.append((i, value))
        if denied:
            return Outcome(denied=tuple(denied))
        for check in checks:
            if check.is_rate:
                entry = self._get(check.key, now)
                if entry is None:
                    self._values[check.key] = _Entry(check.amount, now + check.ttl)
                else:
                    entry.value += check.amount
        return ADMITTED

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int, ...]:
        return self._apply(adjustments, self._clock())

    def _apply(self, adjustments: Sequence[Adjustment], now: float) -> tuple[int, ...]:
        unseeded: list[int] = []
        for i, adjustment in enumerate(adjustments):
            entry = self._get(adjustment.key, now)
            if entry is not None:
                entry.value += adjustment.amount
            elif adjustment.kind == "add" or (
                adjustment.kind == "spend"
                and adjustment.marker is not None
                and self._get(adjustment.marker, now) is not None
            ):
                self._values[adjustment.key] = _Entry(adjustment.amount, now + adjustment.ttl)
            elif adjustment.kind == "spend":
                unseeded.append(i)
        return tuple(unseeded)

    async def seed(self, marker: str, values: Mapping[str, int], ttl: int) -> None:
        now = self._clock()
        for key, value in values.items():
            entry = self._get(key, now)
            if entry is None:
                self._values[key] = _Entry(value, now + ttl)
            elif entry.value < value:
                entry.value = value
        self._values[marker] = _Entry(1, now + ttl)
