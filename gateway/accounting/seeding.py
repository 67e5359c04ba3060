"""Seeding spend counters from the ledger: how a Redis restart neither resets budgets nor double-counts them.

The ledger (every usage record, with its cost) is the truth; spend counters are a fast copy that may be lost (a
Redis restart, a new process) or stale (Redis restored from an old snapshot, spend made during an outage). The rules:

- Never add ledger totals to a live counter: it already counts those requests, so adding would double them.
- A spend counter missing for a period is initialised from the ledger, not from zero. Each (owner kind, period) has
  a seed marker, set once its counters were raised to the ledger's totals; a missing counter without the marker
  makes the store answer "unseeded" and nothing is admitted or added until the limiter has read
  `spend_source(period start, "team" | "key")` and seeded. Missing with the marker present means the owner has not
  spent since seeding, and the counter starts at zero. Replicas may seed at the same time: seeding only raises.
- Seeding raises a counter to the ledger's total and never lowers it or adds to it: `max(counter, ledger)`. That is
  the right value when the counter is missing (the ledger), when it is live (the counter: it also holds what the
  ledger has not flushed yet) and when it is stale (the ledger). The same step runs on start, after Redis comes
  back, and every `reconcile_seconds`, so the store converges on the ledger without ever double-counting.
- What remains: a request settling while its period is being seeded may be counted twice if the ledger already
  held its record, and spend not yet flushed to the ledger is missing after a Redis restart. Both are bounded by
  the requests in flight at that moment.

If the ledger cannot answer, seeding reports failure and is not retried for `retry_seconds`; the limiter then
admits without that budget (fails open) rather than failing requests on a database outage (DESIGN.md §3).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Literal

from gateway.accounting.counters import Counters, Owner
from gateway.accounting.periods import PeriodSpan, to_nano
from gateway.policy import Period

logger = logging.getLogger("tollgate.limits")

# The ledger's answer: spend per team name or key id since a UTC instant. Injected; the ledger implements it.
SpendSource = Callable[[datetime, Literal["team", "key"]], Awaitable[Mapping[str, Decimal]]]

# Spend counters outlive their period so a request admitted just before it ends can still settle into it.
PERIOD_SLACK = 2 * 86400


def seed_marker(owner: Owner, span: PeriodSpan) -> str:
    return f"seeded:{owner}:{span.id}"


def spend_key(owner: Owner, span: PeriodSpan, owner_id: str) -> str:
    return f"spend:{owner}:{span.id}:{owner_id}"


class Seeder:
    def __init__(
        self,
        spend_source: SpendSource,
        clock: Callable[[], float],
        *,
        timeout: float = 5.0,
        retry_seconds: float = 5.0,
    ) -> None:
        self._spend_source = spend_source
        self._clock = clock
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._running: dict[tuple[int, str], asyncio.Future[bool]] = {}
        self._retry_at: dict[tuple[int, str], float] = {}
        # (owner kind, period kind) whose counters this process keeps reconciled with the ledger.
        self.pairs: set[tuple[Owner, Period]] = set()
        self.failures = 0

    async def seed(self, store: Counters, owner: Owner, span: PeriodSpan) -> bool:
        """Raises `store`'s counters for one (owner kind, period) to the ledger's totals and sets the marker; once,
        however many requests ask at the same time. False when the ledger could not answer. Raises
        `CountersUnavailable` when the store cannot be written."""
        marker = seed_marker(owner, span)
        token = (id(store), marker)
        running = self._running.get(token)
        if running is None:
            if self._retry_at.get(token, 0.0) > time.monotonic():
                return False
            running = asyncio.ensure_future(self._seed(store, owner, span, marker, token))
            self._running[token] = running
            running.add_done_callback(functools.partial(self._done, token))
        # Shielded: one cancelled request must not cancel the seeding others wait on.
        return await asyncio.shield(running)

    async def cancel(self) -> None:
        """Stops seedings still running (at shutdown), so none writes to the store after it is closed."""
        running = [*self._running.values()]
        for future in running:
            future.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _done(self, token: tuple[int, str], done: asyncio.Future[bool]) -> None:
        self._running.pop(token, None)
        if not done.cancelled():
            done.exception()  # retrieved here so a failure every waiter gave up on is not reported as unhandled

    async def _seed(self, store: Counters, owner: Owner, span: PeriodSpan, marker: str, token: tuple[int, str]) -> bool:
        try:
            totals = await asyncio.wait_for(self._spend_source(span.start, owner), self._timeout)
        except Exception:
            # The ledger is an injected seam over a database that may be down or slow; whatever it raises, budgets
            # fail open for a few seconds instead of failing requests (DESIGN.md §3).
            self.failures += 1
            self._retry_at[token] = time.monotonic() + self._retry_seconds
            logger.warning("cannot read %s spend since %s from the ledger", owner, span.start, exc_info=True)
            return False
        values = {spend_key(owner, span, owner_id): to_nano(amount) for owner_id, amount in totals.items()}
        await store.seed(marker, values, math.ceil(span.end.timestamp() - self._clock()) + PERIOD_SLACK)
        self.pairs.add((owner, span.kind))
        return True
