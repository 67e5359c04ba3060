"""The two counter stores answer the same way: every test here runs against the in-process store and real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from gateway.accounting.counters import Adjustment, Check, Counters, CountersUnavailable, LocalCounters, Outcome
from gateway.accounting.redis_counters import RedisCounters

REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> str:
    return f"tollgate-test:{uuid.uuid4().hex}:"


async def delete_prefixed(client: redis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def raw_redis(prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.ConnectionError, OSError):
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    await delete_prefixed(client, prefix)
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, clock: Clock, prefix: str) -> AsyncIterator[Counters]:
    if request.param == "local":
        yield LocalCounters(clock)
        return
    counters = RedisCounters.from_url(REDIS_URL, prefix=prefix)
    try:
        await counters.ping()
    except CountersUnavailable:
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield counters
    await delete_prefixed(counters.client, prefix)
    await counters.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rate(key: str, limit: int, amount: int = 1) -> Check:
    return Check("rpm", "team", "t", key, limit, amount, ttl=60)


def budget(key: str, limit: int, marker: str = "seeded:team:2026-11") -> Check:
    return Check("budget", "team", "t", key, limit, 0, ttl=3600, marker=marker)


async def test_a_rate_check_admits_up_to_the_limit_and_adds_its_amount(store: Counters) -> None:
    outcomes = [await store.admit([rate("r", limit=10, amount=4)]) for _ in range(3)]

    assert [o.admitted for o in outcomes] == [True, True, False]
    assert outcomes[2] == Outcome(denied=((0, 8),))


async def test_an_amount_larger_than_the_limit_is_refused_even_when_empty(store: Counters) -> None:
    assert (await store.admit([rate("r", limit=5, amount=6)])).denied == ((0, 0),)


async def test_admission_is_all_or_nothing(store: Counters) -> None:
    await store.admit([rate("full", limit=1)])

    outcome = await store.admit([rate("other", limit=5), rate("full", limit=1)])

    assert outcome.denied == ((1, 1),)
    # "other" was not charged for the refused request: five more still fit.
    assert all([(await store.admit([rate("other", limit=5)])).admitted for _ in range(5)])
    assert not (await store.admit([rate("other", limit=5)])).admitted


async def test_every_failing_check_is_reported(store: Counters) -> None:
    await store.admit([rate("a", limit=1), rate("b", limit=1)])

    assert (await store.admit([rate("a", limit=1), rate("b", limit=1)])).denied == ((0, 1), (1, 1))


async def test_a_spend_counter_of_an_unseeded_period_is_reported_not_read_as_zero(store: Counters) -> None:
    outcome = await store.admit([rate("r", limit=5), budget("s", limit=100)])

    assert outcome == Outcome(unseeded=1)
    # Nothing was reserved on the way.
    assert (await store.admit([rate("r", limit=1)])).admitted


async def test_after_seeding_a_missing_spend_counter_starts_at_zero(store: Counters) -> None:
    await store.seed("seeded:team:2026-11", {"s-known": 70}, ttl=3600)

    assert (await store.admit([budget("s-new", limit=1)])).admitted
    assert (await store.admit([budget("s-known", limit=71)])).admitted
    assert (await store.admit([budget("s-known", limit=70)])).denied == ((0, 70),)


async def test_a_budget_admits_while_spent_is_below_it_and_adds_nothing(store: Counters) -> None:
    await store.seed("m", {"s": 99}, ttl=3600)

    for _ in range(3):
        assert (await store.admit([budget("s", limit=100, marker="m")])).admitted
    await store.settle([Adjustment("spend", "s", 1, 3600, "m")])

    assert (await store.admit([budget("s", limit=100, marker="m")])).denied == ((0, 100),)


async def test_seeding_raises_a_counter_but_never_lowers_or_adds_to_it(store: Counters) -> None:
    await store.seed("m", {"low": 10, "high": 50}, ttl=3600)

    await store.seed("m", {"low": 30, "high": 20}, ttl=3600)

    assert (await store.admit([budget("low", limit=31, marker="m")])).admitted
    assert (await store.admit([budget("low", limit=30, marker="m")])).denied == ((0, 30),)
    assert (await store.admit([budget("high", limit=50, marker="m")])).denied == ((0, 50),)


async def test_settle_kinds(store: Counters) -> None:
    await store.admit([rate("r", limit=100, amount=40)])
    await store.seed("m", {}, ttl=3600)

    unseeded = await store.settle(
        [
            Adjustment("adjust", "r", -30, 60),  # an existing reservation corrected down
            Adjustment("adjust", "gone", 5, 60),  # a window that no longer exists is left alone
            Adjustment("add", "next", 7, 60),  # created
            Adjustment("spend", "s", 3, 3600, "m"),  # seeded period: created
            Adjustment("spend", "s2", 3, 3600, "other-marker"),  # unseeded period: skipped and reported
        ]
    )

    assert unseeded == (4,)
    assert (await store.admit([rate("r", limit=10)])).denied == ((0, 10),)
    assert (await store.admit([rate("gone", limit=1)])).admitted
    assert (await store.admit([rate("next", limit=7)])).denied == ((0, 7),)
    assert (await store.admit([budget("s", limit=3, marker="m")])).denied == ((0, 3),)
    assert (await store.admit([budget("s2", limit=3, marker="other-marker")])).unseeded == 0


async def test_a_seed_larger_than_one_script_call_sets_its_marker_only_at_the_end(store: Counters) -> None:
    values = {f"s{i}": i for i in range(1, 1201)}

    await store.seed("m", values, ttl=3600)

    assert (await store.admit([budget("s1200", limit=1200, marker="m")])).denied == ((0, 1200),)
    assert (await store.admit([budget("s1", limit=2, marker="m")])).admitted


async def test_local_counters_expire_with_their_ttl(clock: Clock) -> None:
    store = LocalCounters(clock)
    await store.admit([rate("r", limit=1)])
    await store.seed("m", {"s": 5}, ttl=100)

    clock.now += 100
    assert (await store.admit([rate("r", limit=1)])).admitted
    assert (await store.admit([budget("s", limit=100, marker="m")])).unseeded == 0

    clock.now += 120  # the sweep drops expired entries instead of keeping every minute's counters
    await store.admit([rate("x", limit=1)])
    assert len(store) == 1


async def test_redis_counters_carry_their_ttl(raw_redis: redis.Redis, prefix: str) -> None:
    store = RedisCounters.from_url(REDIS_URL, prefix=prefix)
    await store.admit([rate("r", limit=5)])
    await store.seed("m", {"s": 5}, ttl=3600)
    await store.admit([budget("new", limit=10, marker="m")])
    await store.admit([rate("r", limit=5)])  # a second increment must not reset the expiry
    await store.close()

    assert 0 < await raw_redis.ttl(prefix + "r") <= 60
    for key in ("s", "m", "new"):
        assert 3500 < await raw_redis.ttl(prefix + key) <= 3600
    assert await raw_redis.get(prefix + "r") == b"2"


async def test_adjustments_sent_with_an_admission_apply_before_its_checks(store: Counters) -> None:
    await store.admit([rate("tpm", limit=100, amount=90)])
    await store.seed("m", {}, ttl=3600)

    outcome = await store.admit(
        [rate("tpm", limit=100, amount=50)],
        [Adjustment("adjust", "tpm", -60, 60), Adjustment("spend", "s", 5, 3600, "unseeded-marker")],
    )

    assert outcome == Outcome(unsettled=(1,))  # admitted (30 + 50 <= 100); the unseeded spend reported
    refused = await store.admit([rate("tpm", limit=100, amount=21)], [Adjustment("spend", "s2", 5, 3600, "m")])
    assert refused == Outcome(denied=((0, 80),))  # the seeded spend applied even though the check failed
    assert (await store.admit([budget("s2", limit=5, marker="m")])).denied == ((0, 5),)


async def test_a_budget_without_a_seed_marker_is_never_taken_as_seeded(store: Counters) -> None:
    unmarked = Check("budget", "team", "t", "s", 10, 0, ttl=60)

    assert (await store.admit([unmarked])).unseeded == 0
    assert await store.settle([Adjustment("spend", "s", 1, 60)]) == (0,)
