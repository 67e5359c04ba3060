"""Budgets and rate limits, enforced before the upstream call (DESIGN.md §1–3).

Per team and per key: a USD budget per UTC calendar day or month, requests per minute (rpm) and tokens per minute
(tpm), from the policy's `limits` section; a key's own `budget_usd` replaces the policy's key budget. The request
path calls two methods:

    admission = await limiter.admit(key, estimate_tokens(len(body), max_tokens))   # raises RateLimited (429)
    ... upstream call, usage, cost ...
    await limiter.settle(admission, actual_tokens, cost_usd)

`admit` checks every applicable counter and reserves in one atomic step: 1 request, and the token *estimate* (a
request's tokens are unknown until it is answered). `settle` replaces the estimate with the actual count and adds
the cost to the budget's period. So tpm and budget can overshoot by what the requests in flight end up using, never
by more; rpm is exact. A budget admits while spent < budget.

`settle` does no I/O: it merges its corrections into a buffer that travels with this process's next admission (the
same script call, applied before the checks, so this process always sees its own settles) or, when no admission
comes, is flushed after `flush_seconds`. With Redis that makes one round trip per request instead of two; other
replicas see a settle at most `flush_seconds` late, which adds that much traffic to the overshoot bound.

Rate counters live per UTC minute (fixed windows: Retry-After is the time to the next minute, and a burst can
straddle a boundary). A request still running when its minute ends keeps its reservation there and adds only what
it used beyond it to the minute it finishes in.

Where the counters live: with `REDIS_URL`, in Redis (`redis_counters.py`), shared by every replica; without, in
this process (`counters.LocalCounters`), with the same semantics. If Redis goes away, no request fails: the limiter
logs once, counts, reports `healthy = False`, serves from in-process counters (each replica then enforces the
full limits on its own), pings Redis in the background and switches back once it answers and has been re-seeded.

Spend counters are seeded from the ledger and reconciled with it without ever double-counting: the rules and
their reasons are in `seeding.py`.

If the ledger cannot answer, budgets fail open (the request is admitted, the failure logged and counted, retried
after a pause): a database outage must not stop traffic (DESIGN.md §3). Rate limits do not depend on the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from gateway.accounting.counters import (
    ADMITTED,
    AdjustKind,
    Adjustment,
    Check,
    Counters,
    CountersUnavailable,
    LocalCounters,
    Outcome,
    Owner,
)
from gateway.accounting.periods import PeriodSpan, format_usd, from_nano, period_span, to_nano
from gateway.accounting.seeding import PERIOD_SLACK, Seeder, SpendSource, seed_marker, spend_key
from gateway.exceptions import RateLimited
from gateway.keys.store import VirtualKey
from gateway.policy import ANY_TEAM, PERIODS, LimitRule, Limits, Period, Policy

if TYPE_CHECKING:
    # redis-py costs ~7 MB of memory to import: only deployments with REDIS_URL load it.
    from gateway.accounting.redis_counters import RedisCounters

__all__ = ["NO_LIMITS", "Admission", "Limiter", "SpendSource", "build_limiter", "estimate_tokens"]

logger = logging.getLogger("tollgate.limits")

# Rate counters outlive their minute by a little, for replicas whose clocks disagree slightly.
_MINUTE_SLACK = 5
# Completion tokens assumed when a request sets no max_tokens: settle corrects it, this only sizes the reservation.
DEFAULT_COMPLETION_ESTIMATE = 256


def estimate_tokens(
    body_bytes: int, max_tokens: int | None, default_completion: int = DEFAULT_COMPLETION_ESTIMATE
) -> int:
    """A cheap estimate for the tpm reservation: ~4 bytes of JSON body per prompt token (JSON framing makes it
    generous), plus the completion the request allows (`max_tokens` / `max_completion_tokens`). No tokenizer on
    the hot path: settle replaces it with the real count."""
    return body_bytes // 4 + (max_tokens if max_tokens is not None and max_tokens > 0 else default_completion)


@dataclass(frozen=True, slots=True)
class _Window:
    """The current minute and the periods containing it. Periods change only on minute boundaries, so this is
    computed once a minute, not per request."""

    minute: int
    spans: Mapping[Period, PeriodSpan]


@dataclass(slots=True, eq=False)
class Admission:
    """What `admit` reserved, for `settle` to correct. Settling twice does nothing."""

    checks: tuple[Check, ...] = ()
    window: _Window | None = None
    store: Counters | None = None
    settled: bool = False


# Returned when no limit applies: settle sees no checks and returns at once.
NO_LIMITS = Admission()


@dataclass(slots=True)
class _Pending:
    """A settle correction waiting to be sent, merged with others on the same counter."""

    kind: AdjustKind
    key: str
    amount: int
    ttl: int
    marker: str | None = None
    owner: Owner = "team"
    span: PeriodSpan | None = None  # spend: the period to seed if the store has lost it

    def adjustment(self) -> Adjustment:
        return Adjustment(self.kind, self.key, self.amount, self.ttl, self.marker)


class Limiter:
    def __init__(
        self,
        limits: Limits,
        spend_source: SpendSource,
        *,
        redis: RedisCounters | None = None,
        clock: Callable[[], float] = time.time,
        flush_seconds: float = 0.05,
        reconcile_seconds: float = 300.0,
        reconnect_seconds: float = 1.0,
        seed_timeout: float = 5.0,
    ) -> None:
        self._redis = redis
        self._redis_ok = redis is not None
        self._local = LocalCounters(clock)
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._reconcile_seconds = reconcile_seconds
        self._reconnect_seconds = reconnect_seconds
        self._seeder = Seeder(spend_source, clock, timeout=seed_timeout)
        # Empty rules become None, so "no limit" is one dict lookup on the request path.
        self._team_rules: dict[str, LimitRule | None] = {
            name: None if rule.empty else rule for name, rule in limits.teams.items() if name != ANY_TEAM
        }
        any_team = limits.teams.get(ANY_TEAM)
        self._any_team = None if any_team is None or any_team.empty else any_team
        self._key_default = None if limits.keys.empty else limits.keys
        self._key_rules: dict[Decimal, LimitRule] = {}
        self._window = _Window(-1, {})
        rules = [rule for rule in [*self._team_rules.values(), self._any_team, self._key_default] if rule is not None]
        # Whether any tpm limit exists: without one, the request path need not estimate tokens before admitting.
        self.counts_tokens = any(rule.tpm is not None for rule in rules)
        for rule in [*self._team_rules.values(), self._any_team]:
            if rule is not None and rule.budget_usd is not None:
                self._seeder.pairs.add(("team", rule.period))
        if self._key_default is not None and self._key_default.budget_usd is not None:
            self._seeder.pairs.add(("key", self._key_default.period))
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._flusher: asyncio.Task[None] | None = None  # the one waiting out flush_seconds
        self._flushes: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopped = False
        # Counted for /metrics and /readyz.
        self.redis_outages = 0
        self.fallback_admissions = 0
        self.lost_settles = 0

    @property
    def seed_failures(self) -> int:
        return self._seeder.failures

    @property
    def healthy(self) -> bool:
        """False while a configured Redis is unreachable (requests are then limited per replica)."""
        return self._redis is None or self._redis_ok

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.ping()
            except CountersUnavailable as exc:
                self._redis_down(exc)
        await self.reconcile()
        if self._reconcile_seconds > 0:
            self._spawn(self._reconcile_loop())

    async def stop(self) -> None:
        self._stopped = True
        tasks = [*self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._seeder.cancel()
        if self._flusher is not None:
            self._flusher.cancel()  # still asleep: it has taken nothing from the buffer yet
        # One already sending runs to its end: cancelled, its batch could be lost or, if sent again, counted twice.
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.flush()
        if self._redis is not None:
            # Closing the connections to a Redis that is gone has nothing left to do.
            with contextlib.suppress(CountersUnavailable):
                await self._redis.close()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- request path ---------------------------------------------------------------------------------------------

    async def admit(self, key: VirtualKey, estimated_tokens: int) -> Admission:
        """Reserves one request and `estimated_tokens` against every limit of the key and its team, or raises
        `RateLimited` (429, with Retry-After) naming the limit. Never fails for want of Redis or the ledger."""
        team_rule = self._team_rules.get(key.team, self._any_team)
        key_rule = self._key_default if key.budget_usd is None else self._key_rule(key.budget_usd)
        if team_rule is None and key_rule is None:
            return NO_LIMITS
        now = self._clock()
        window = self._current_window(now)
        checks: list[Check] = []
        rates: list[Check] = []
        if team_rule is not None:
            self._add_checks(checks, rates, "team", key.team, team_rule, estimated_tokens, window, now)
        if key_rule is not None:
            self._add_checks(checks, rates, "key", key.id, key_rule, estimated_tokens, window, now)
        # Budgets first: a refusal names the budget when both it and a rate limit are exhausted.
        checks += rates
        outcome, store, checks = await self._admit_on_store(checks, window)
        if outcome.denied:
            raise self._refusal(key, checks, outcome, now)
        return Admission(tuple(checks), window, store)

    async def settle(self, admission: Admission, tokens: int, cost_usd: Decimal | None) -> None:
        """Replaces the token estimate with `tokens` and adds `cost_usd` to the budgets. No I/O, never raises."""
        window = admission.window
        if admission.settled or not admission.checks or window is None:
            return
        admission.settled = True
        now = self._clock()
        minute = int(now // 60)
        # Token corrections belong to the store that reserved them; spend goes wherever counting happens now.
        same_store = admission.store is self._store()
        cost = to_nano(cost_usd) if cost_usd is not None and cost_usd > 0 else 0
        for check in admission.checks:
            if check.metric == "tpm" and same_store:
                extra = tokens - check.amount
                if minute == window.minute:
                    if extra:
                        self._queue(_Pending("adjust", check.key, extra, check.ttl))
                elif extra > 0:
                    # The reservation's minute is over; what the request used beyond it counts in this one.
                    ttl = math.ceil((minute + 1) * 60 - now) + _MINUTE_SLACK
                    self._queue(_Pending("add", f"tpm:{check.owner}:{minute}:{check.owner_id}", extra, ttl))
            elif check.metric == "budget" and cost:
                span = window.spans[check.period]
                self._queue(_Pending("spend", check.key, cost, check.ttl, check.marker, check.owner, span))
        self._schedule_flush()

    async def flush(self) -> None:
        """Sends the buffered settle corrections now (see the module docstring). Never raises."""
        for _ in range(3):
            pending = self._take_pending()
            if not pending:
                return
            store = self._store()
            try:
                unsettled = await store.settle([p.adjustment() for p in pending])
            except CountersUnavailable as exc:
                self._redis_down(exc)
                self._requeue(p for p in pending if p.kind == "spend")
                continue
            if unsettled:
                await self._seed_and_requeue(store, [pending[i] for i in unsettled])

    # -- internals ------------------------------------------------------------------------------------------------

    def _key_rule(self, budget: Decimal) -> LimitRule:
        rule = self._key_rules.get(budget)
        if rule is None:
            rule = replace(self._key_default or LimitRule(), budget_usd=budget)
            if len(self._key_rules) > 10_000:
                self._key_rules.clear()
            self._key_rules[budget] = rule
        return rule

    def _current_window(self, now: float) -> _Window:
        minute = int(now // 60)
        if minute != self._window.minute:
            self._window = _Window(minute, {kind: period_span(kind, now) for kind in PERIODS})
        return self._window

    def _add_checks(
        self,
        budgets: list[Check],
        rates: list[Check],
        owner: Owner,
        owner_id: str,
        rule: LimitRule,
        estimated_tokens: int,
        window: _Window,
        now: float,
    ) -> None:
        if rule.budget_usd is not None:
            span = window.spans[rule.period]
            end = span.end.timestamp()
            ttl = math.ceil(end - now) + PERIOD_SLACK
            key, marker = spend_key(owner, span, owner_id), seed_marker(owner, span)
            limit = to_nano(rule.budget_usd)
            budgets.append(
                Check("budget", owner, owner_id, key, limit, 0, ttl, marker, resets_at=end, period=span.kind)
            )
        if rule.rpm is None and rule.tpm is None:
            return
        end = (window.minute + 1) * 60.0
        ttl = math.ceil(end - now) + _MINUTE_SLACK
        if rule.rpm is not None:
            key = f"rpm:{owner}:{window.minute}:{owner_id}"
            rates.append(Check("rpm", owner, owner_id, key, rule.rpm, 1, ttl, resets_at=end))
        if rule.tpm is not None:
            # Capped at the limit, so a request larger than the whole limit still gets in, alone, into an empty
            # minute rather than never.
            amount = max(0, min(estimated_tokens, rule.tpm))
            key = f"tpm:{owner}:{window.minute}:{owner_id}"
            rates.append(Check("tpm", owner, owner_id, key, rule.tpm, amount, ttl, resets_at=end))

    def _store(self) -> Counters:
        if self._redis is not None and self._redis_ok:
            return self._redis
        return self._local

    def _queue(self, entry: _Pending) -> None:
        merged = self._pending.get((entry.kind, entry.key))
        if merged is None:
            self._pending[(entry.kind, entry.key)] = entry
        else:
            merged.amount += entry.amount

    def _requeue(self, entries: Iterable[_Pending]) -> None:
        for entry in entries:
            self._queue(entry)
        self._schedule_flush()

    def _take_pending(self) -> list[_Pending]:
        if not self._pending:
            return []
        pending = list(self._pending.values())
        self._pending = {}
        return pending

    def _schedule_flush(self) -> None:
        if self._pending and self._flusher is None and not self._stopped:
            self._flusher = asyncio.ensure_future(self._flush_later())
            self._flushes.add(self._flusher)
            self._flusher.add_done_callback(self._flushes.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_seconds)
        self._flusher = None
        await self.flush()

    async def _admit_on_store(self, checks: list[Check], window: _Window) -> tuple[Outcome, Counters, list[Check]]:
        pending = self._take_pending()
        store = self._store()
        # Each pass either answers or removes a cause for another pass (an unseeded period, a lost Redis).
        for _ in range(len(checks) + 3):
            store = self._store()
            try:
                outcome = await store.admit(checks, [p.adjustment() for p in pending])
            except CountersUnavailable as exc:
                self._redis_down(exc)
                pending = [p for p in pending if p.kind == "spend"]
                continue
            if outcome.unsettled:
                # Off the request path: seeding reads the ledger.
                self._spawn(self._seed_and_requeue(store, [pending[i] for i in outcome.unsettled]))
            pending = []
            if outcome.unseeded is None:
                break
            check = checks[outcome.unseeded]
            try:
                seeded = await self._seeder.seed(store, check.owner, window.spans[check.period])
            except CountersUnavailable as exc:
                self._redis_down(exc)
                continue
            if not seeded:
                # The ledger cannot tell what was spent: admit without this budget rather than refuse.
                checks = [c for c in checks if c is not check]
        else:
            # Unreachable in practice; admitting beats refusing here.
            outcome = ADMITTED
            self._requeue(pending)
        if store is self._local and self._redis is not None:
            self.fallback_admissions += 1
        return outcome, store, checks

    async def _seed_and_requeue(self, store: Counters, entries: Sequence[_Pending]) -> None:
        """Spend skipped because its period was unseeded: seed from the ledger, then send it again. If the ledger
        cannot answer, it is dropped: the ledger holds that cost, and the next successful seeding reads it."""
        for owner, span in {(e.owner, e.span) for e in entries if e.span is not None}:
            group = [e for e in entries if e.owner == owner and e.span == span]
            try:
                seeded = await self._seeder.seed(store, owner, span)
            except CountersUnavailable as exc:
                self._redis_down(exc)
                seeded = True  # for the fallback store, which seeds on its own
            if seeded:
                self._requeue(group)
            else:
                self.lost_settles += len(group)

    async def reconcile(self) -> None:
        """Raises the current periods' spend counters to the ledger's totals (the rules are in `seeding.py`)."""
        window = self._current_window(self._clock())
        store = self._store()
        for owner, kind in sorted(self._seeder.pairs):
            try:
                await self._seeder.seed(store, owner, window.spans[kind])
            except CountersUnavailable as exc:
                self._redis_down(exc)
                return

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_seconds)
            await self.reconcile()

    def _redis_down(self, exc: CountersUnavailable) -> None:
        if not self._redis_ok:
            return
        self._redis_ok = False
        self.redis_outages += 1
        logger.warning("Redis unreachable (%s): budgets and rate limits are per replica until it is back", exc)
        # Counts left from an earlier outage are stale: the fallback starts over and seeds from the ledger.
        self._local.clear()
        self._pending = {k: p for k, p in self._pending.items() if p.kind == "spend"}
        if not self._stopped and (self._reconnecting is None or self._reconnecting.done()):
            self._reconnecting = self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        assert self._redis is not None
        delay = self._reconnect_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self._redis.ping()
                # Seeded before taking traffic back: Redis may have restarted empty, or missed the outage's spend.
                window = self._current_window(self._clock())
                for owner, kind in sorted(self._seeder.pairs):
                    await self._seeder.seed(self._redis, owner, window.spans[kind])
            except CountersUnavailable:
                delay = min(delay * 2, 30.0)
                continue
            await self.flush()  # what was settled during the outage belongs to the in-process counters
            self._redis_ok = True
            logger.info("Redis is back: budgets and rate limits are shared again")
            return

    def _refusal(self, key: VirtualKey, checks: list[Check], outcome: Outcome, now: float) -> RateLimited:
        retry_after = max(max(1, math.ceil(checks[i].resets_at - now)) for i, _ in outcome.denied)
        headers = {"Retry-After": str(retry_after)}
        index, value = outcome.denied[0]
        check = checks[index]
        who = f"team {check.owner_id!r}" if check.owner == "team" else f"key {check.owner_id!r} (team {key.team!r})"
        if check.metric == "budget":
            label = "today" if check.period == "day" else "this month"
            resets = datetime.fromtimestamp(check.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            spent, budget = format_usd(from_nano(value)), format_usd(from_nano(check.limit))
            message = f"Budget exceeded for {who}: {spent} of {budget} spent {label}; resets {resets}"
            return RateLimited(message, code="budget_exceeded", headers=headers)
        what = "requests per minute (RPM)" if check.metric == "rpm" else "tokens per minute (TPM)"
        message = (
            f"Rate limit reached for {what} on {who}: limit {check.limit}, used {value}, requested {check.amount}. "
            f"Please try again in {retry_after}s."
        )
        return RateLimited(message, code="rate_limit_exceeded", headers=headers)


def build_limiter(
    policy: Policy,
    redis_url: str | None,
    spend_source: SpendSource,
    *,
    clock: Callable[[], float] = time.time,
    key_prefix: str = "tollgate:",
    reconcile_seconds: float = 300.0,
) -> Limiter:
    """The limiter for a policy: Redis-backed when `redis_url` is set, in-process otherwise. Call `start()`."""
    redis = None
    if redis_url:
        from gateway.accounting.redis_counters import RedisCounters

        redis = RedisCounters.from_url(redis_url, prefix=key_prefix)
    return Limiter(policy.limits, spend_source, redis=redis, clock=clock, reconcile_seconds=reconcile_seconds)
