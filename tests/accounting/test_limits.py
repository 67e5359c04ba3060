"""Limiter semantics: every test runs with in-process counters and with real Redis, on an injected clock."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
import redis.asyncio as redis

from gateway.accounting.counters import CountersUnavailable
from gateway.accounting.limits import NO_LIMITS, Limiter, build_limiter, estimate_tokens
from gateway.accounting.periods import period_span, to_nano
from gateway.accounting.redis_counters import RedisCounters
from gateway.exceptions import RateLimited
from gateway.keys.store import VirtualKey
from gateway.policy import parse_policy

REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START = datetime(2026, 11, 15, 10, 0, 40, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime = START) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


class Ledger:
    """A fake `spend_source`: usage records with a time and a cost, summed since a date by team or key."""

    def __init__(self) -> None:
        self.records: list[tuple[datetime, str, str, Decimal]] = []
        self.calls: list[tuple[datetime, str]] = []
        self.broken = False

    def add(self, usd: str, *, team: str = "research", key: str = "key_a", at: datetime = START) -> None:
        self.records.append((at, team, key, Decimal(usd)))

    async def __call__(self, since: datetime, by: Literal["team", "key"]) -> dict[str, Decimal]:
        self.calls.append((since, by))
        if self.broken:
            raise RuntimeError("database is down")
        totals: dict[str, Decimal] = {}
        for at, team, key, usd in self.records:
            if at >= since:
                owner = team if by == "team" else key
                totals[owner] = totals.get(owner, Decimal(0)) + usd
        return totals


def make_key(key_id: str = "key_a", team: str = "research", budget: str | None = None) -> VirtualKey:
    return VirtualKey(
        id=key_id,
        team=team,
        display="tg-xxxxxxx…",
        name=None,
        budget_usd=Decimal(budget) if budget is not None else None,
        created_at=START,
        revoked_at=None,
    )


MakeLimiter = Callable[..., Any]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(params=["local", "redis"])
async def make_limiter(request: pytest.FixtureRequest, clock: Clock, ledger: Ledger) -> AsyncIterator[MakeLimiter]:
    prefix = f"tollgate-test:{uuid.uuid4().hex}:"
    started: list[Limiter] = []

    async def make(limits: dict[str, Any] | None = None) -> Limiter:
        policy = parse_policy({"limits": limits} if limits is not None else {}, "test.yaml", {})
        store = RedisCounters.from_url(REDIS_URL, prefix=prefix) if request.param == "redis" else None
        limiter = Limiter(policy.limits, ledger, redis=store, clock=clock, reconcile_seconds=0)
        await limiter.start()
        if not limiter.healthy:
            pytest.skip(f"no Redis at {REDIS_URL}")
        started.append(limiter)
        return limiter

    yield make
    for limiter in started:
        await limiter.stop()
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def refusal(limiter: Limiter, key: VirtualKey, tokens: int = 10) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(key, tokens)
    return caught.value


async def test_without_limits_admission_is_a_constant_and_touches_nothing(
    make_limiter: MakeLimiter, ledger: Ledger
) -> None:
    limiter = await make_limiter()

    admission = await limiter.admit(make_key(), 1000)
    await limiter.settle(admission, 5000, Decimal(3))

    assert admission is NO_LIMITS
    assert not admission.settled
    assert ledger.calls == []


async def test_rpm_admits_up_to_the_limit_then_refuses_until_the_next_minute(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = await make_limiter({"teams": {"research": {"rpm": 3}}})
    key = make_key()
    for _ in range(3):
        await limiter.admit(key, 10)

    error = await refusal(limiter, key)

    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.headers == {"Retry-After": "20"}  # the clock is at :40 past the minute
    assert error.message == (
        "Rate limit reached for requests per minute (RPM) on team 'research': limit 3, used 3, requested 1. "
        "Please try again in 20s."
    )
    clock.advance(19.5)
    assert (await refusal(limiter, key)).headers == {"Retry-After": "1"}
    clock.advance(0.5)
    await limiter.admit(key, 10)


async def test_rpm_of_a_team_is_shared_by_its_keys_and_key_rpm_is_per_key(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"teams": {"research": {"rpm": 3}}, "keys": {"rpm": 2}})
    a, b = make_key("key_a"), make_key("key_b")
    await limiter.admit(a, 1)
    await limiter.admit(a, 1)

    assert "on key 'key_a' (team 'research')" in (await refusal(limiter, a)).message
    await limiter.admit(b, 1)
    assert "on team 'research'" in (await refusal(limiter, b)).message
    await limiter.admit(make_key("key_c", team="other"), 1)


async def test_tpm_reserves_the_estimate_and_settle_replaces_it_with_the_actual_count(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter({"keys": {"tpm": 1000}})
    key = make_key()
    first = await limiter.admit(key, 400)
    await limiter.admit(key, 400)

    error = await refusal(limiter, key, 400)
    assert error.code == "rate_limit_exceeded"
    assert error.message.startswith(
        "Rate limit reached for tokens per minute (TPM) on key 'key_a' (team 'research'): limit 1000, used 800, "
        "requested 400."
    )

    await limiter.settle(first, 100, None)  # used 100 of its 400: 300 go back
    await limiter.admit(key, 400)  # 900
    await refusal(limiter, key, 101)


async def test_tokens_beyond_the_estimate_count_against_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"tpm": 1000}})
    key = make_key()

    await limiter.settle(await limiter.admit(key, 100), 950, None)

    assert (await refusal(limiter, key, 100)).message.endswith("used 950, requested 100. Please try again in 20s.")
    await limiter.admit(key, 50)


async def test_a_request_larger_than_the_whole_tpm_gets_an_empty_minute_to_itself(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = await make_limiter({"keys": {"tpm": 1000}})
    key = make_key()

    await limiter.admit(key, 5000)

    await refusal(limiter, key, 1)
    clock.advance(20)
    await limiter.admit(key, 1)


async def test_a_request_settling_in_a_later_minute_adds_only_its_overshoot_there(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = await make_limiter({"keys": {"tpm": 1000}})
    key = make_key()
    long_stream = await limiter.admit(key, 300)
    clock.advance(30)  # the next minute

    await limiter.settle(long_stream, 1000, None)

    # 700 tokens beyond its reservation landed in this minute; the reservation stays with the old one.
    await limiter.admit(key, 300)
    assert "used 1000" in (await refusal(limiter, key, 1)).message


async def test_a_refused_request_reserves_nothing(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"rpm": 2, "tpm": 100}})
    key = make_key()
    first = await limiter.admit(key, 100)

    assert "TPM" in (await refusal(limiter, key, 100)).message  # not counted as a request either
    await limiter.settle(first, 0, None)
    await limiter.admit(key, 1)
    assert "RPM" in (await refusal(limiter, key, 1)).message


async def test_budget_exhaustion_says_so_with_the_period_and_its_reset(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = await make_limiter({"teams": {"research": {"budget_usd": 10, "period": "month"}}})
    key = make_key()
    await limiter.settle(await limiter.admit(key, 10), 10, Decimal("6"))
    await limiter.settle(await limiter.admit(key, 10), 10, Decimal("4"))

    error = await refusal(limiter, key)

    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "budget_exceeded")
    assert error.message == (
        "Budget exceeded for team 'research': $10.00 of $10.00 spent this month; resets 2026-12-01T00:00:00Z"
    )
    to_reset = datetime(2026, 12, 1, tzinfo=UTC) - START
    assert error.headers == {"Retry-After": str(int(to_reset.total_seconds()))}


async def test_a_budget_admits_while_spent_is_below_it_so_requests_in_flight_may_overshoot(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": 1}})
    key = make_key()
    await limiter.settle(await limiter.admit(key, 10), 10, Decimal("0.999999999"))
    in_flight = [await limiter.admit(key, 10) for _ in range(3)]  # a nano-dollar short: all admitted

    for admission in in_flight:
        await limiter.settle(admission, 10, Decimal("0.5"))

    error = await refusal(limiter, key)
    assert error.message.startswith("Budget exceeded for key 'key_a' (team 'research'): $2.50 of $1.00 spent")


async def test_spend_is_exact_to_the_nano_dollar(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": "0.000001"}})
    key = make_key()
    for _ in range(999):
        await limiter.settle(await limiter.admit(key, 1), 1, Decimal("0.000000001"))
    await limiter.admit(key, 1)  # 999 of 1000 nano-dollars
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal("0.000000001"))

    assert (await refusal(limiter, key)).message.startswith("Budget exceeded for key 'key_a' (team 'research'): ")


async def test_an_unpriced_request_adds_no_spend(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": "0.01"}})
    key = make_key()
    for _ in range(3):
        await limiter.settle(await limiter.admit(key, 1), 1000, None)

    await limiter.admit(key, 1)


async def test_a_keys_own_budget_overrides_the_policy_default(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": 100, "rpm": 50}})
    small, default = make_key("key_small", budget="1"), make_key("key_default")
    await limiter.settle(await limiter.admit(small, 1), 1, Decimal("1.5"))
    await limiter.settle(await limiter.admit(default, 1), 1, Decimal("1.5"))

    assert "$1.50 of $1.00" in (await refusal(limiter, small)).message
    await limiter.admit(default, 1)


async def test_a_keys_own_budget_applies_without_any_limits_section(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    key = make_key(budget="0.005")
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal("0.005"))

    error = await refusal(limiter, key)

    assert error.message == (
        "Budget exceeded for key 'key_a' (team 'research'): $0.005 of $0.005 spent this month; "
        "resets 2026-12-01T00:00:00Z"
    )


async def test_day_budgets_roll_over_at_utc_midnight(make_limiter: MakeLimiter, clock: Clock, ledger: Ledger) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": 1, "period": "day"}})
    key = make_key()
    clock.set(datetime(2026, 11, 15, 23, 59, 30, tzinfo=UTC))
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(1))
    ledger.add("1", at=datetime(2026, 11, 15, 23, 59, 30, tzinfo=UTC))

    error = await refusal(limiter, key)
    assert "spent today; resets 2026-11-16T00:00:00Z" in error.message
    assert error.headers == {"Retry-After": "30"}

    clock.advance(30)
    await limiter.admit(key, 1)
    # The new day was seeded from the ledger since its own midnight, which holds nothing yet.
    assert ledger.calls[-1] == (datetime(2026, 11, 16, tzinfo=UTC), "key")


async def test_month_budgets_roll_over_at_the_new_year(make_limiter: MakeLimiter, clock: Clock) -> None:
    clock.set(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    limiter = await make_limiter({"teams": {"research": {"budget_usd": 1}}})
    key = make_key()
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(2))

    error = await refusal(limiter, key)
    assert error.message.endswith("spent this month; resets 2027-01-01T00:00:00Z")
    assert error.headers == {"Retry-After": "3600"}

    clock.set(datetime(2027, 1, 1, tzinfo=UTC))
    await limiter.admit(key, 1)


async def test_spend_already_in_the_ledger_counts_from_the_start(
    make_limiter: MakeLimiter, ledger: Ledger, clock: Clock
) -> None:
    ledger.add("7", at=datetime(2026, 11, 2, tzinfo=UTC))
    ledger.add("50", at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC))  # last month: not this budget's business
    ledger.add("9", team="other", key="key_other")
    limiter = await make_limiter({"teams": {"research": {"budget_usd": 10}}})
    key = make_key()

    assert ledger.calls == [(datetime(2026, 11, 1, tzinfo=UTC), "team")]  # seeded on start
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(3))

    assert "$10.00 of $10.00" in (await refusal(limiter, key)).message
    assert len(ledger.calls) == 1


async def test_a_key_budget_seeds_lazily_once_for_all_keys(make_limiter: MakeLimiter, ledger: Ledger) -> None:
    ledger.add("0.75", key="key_a")
    limiter = await make_limiter()
    assert ledger.calls == []  # nothing in the policy has a budget

    await limiter.admit(make_key("key_a", budget="1"), 1)
    await limiter.admit(make_key("key_b", budget="1"), 1)

    assert ledger.calls == [(datetime(2026, 11, 1, tzinfo=UTC), "key")]
    await limiter.settle(await limiter.admit(make_key("key_a", budget="1"), 1), 1, Decimal("0.25"))
    await refusal(limiter, make_key("key_a", budget="1"))


async def test_when_the_ledger_cannot_answer_budgets_fail_open(make_limiter: MakeLimiter, ledger: Ledger) -> None:
    ledger.broken = True
    limiter = await make_limiter({"teams": {"research": {"budget_usd": 1, "rpm": 2}}})
    key = make_key()

    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(5))

    await limiter.admit(key, 1)
    assert limiter.seed_failures == 1  # not retried on every request
    assert "RPM" in (await refusal(limiter, key)).message  # rate limits still hold


async def test_the_star_team_rule_applies_to_each_unlisted_team_separately(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"teams": {"*": {"rpm": 1}, "vip": {}}})

    await limiter.admit(make_key("key_a", team="a"), 1)
    await limiter.admit(make_key("key_b", team="b"), 1)
    await refusal(limiter, make_key("key_a2", team="a"))
    for _ in range(5):
        assert await limiter.admit(make_key("key_v", team="vip"), 1) is NO_LIMITS


async def test_settling_twice_counts_once(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter({"keys": {"budget_usd": 1}})
    key = make_key()
    admission = await limiter.admit(key, 1)

    await limiter.settle(admission, 1, Decimal("0.6"))
    await limiter.settle(admission, 1, Decimal("0.6"))

    await limiter.admit(key, 1)


async def test_counts_tokens_says_whether_an_estimate_is_needed_at_all(make_limiter: MakeLimiter) -> None:
    assert not (await make_limiter()).counts_tokens
    assert not (await make_limiter({"teams": {"t": {"rpm": 5, "budget_usd": 1}}, "keys": {"rpm": 5}})).counts_tokens
    assert (await make_limiter({"teams": {"*": {"tpm": 5}}})).counts_tokens
    assert (await make_limiter({"keys": {"tpm": 5}})).counts_tokens


async def test_build_limiter_picks_in_process_counters_without_a_redis_url(ledger: Ledger) -> None:
    policy = parse_policy({"limits": {"keys": {"rpm": 1}}}, "test.yaml", {})
    limiter = build_limiter(policy, None, ledger)
    await limiter.start()

    await limiter.admit(make_key(), 1)

    assert limiter.healthy
    assert "RPM" in (await refusal(limiter, make_key())).message
    await limiter.stop()


def test_periods_are_utc_calendar_days_and_months() -> None:
    now = datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC).timestamp()

    day, month = period_span("day", now), period_span("month", now)

    assert (day.id, day.start, day.end) == (
        "2026-02-28",
        datetime(2026, 2, 28, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert (month.id, month.end - month.start) == ("2026-02", timedelta(days=28))


def test_helpers() -> None:
    assert to_nano(Decimal("0.0000000001")) == 1  # rounded up: a counter never undercounts
    assert to_nano(Decimal("12.345")) == 12_345_000_000
    assert estimate_tokens(4000, None) == 1000 + 256
    assert estimate_tokens(4000, 50) == 1050


async def test_a_redis_outage_at_start_is_not_an_error(ledger: Ledger) -> None:
    limits = parse_policy({"limits": {"keys": {"rpm": 1}}}, "t.yaml", {}).limits
    limiter = Limiter(limits, ledger, redis=RedisCounters.from_url("redis://127.0.0.1:1/0", timeout=0.2))

    await limiter.start()

    assert not limiter.healthy
    await limiter.admit(make_key(), 1)
    await refusal(limiter, make_key())
    await limiter.stop()
    with pytest.raises(CountersUnavailable):
        await RedisCounters.from_url("redis://127.0.0.1:1/0", timeout=0.2).ping()
