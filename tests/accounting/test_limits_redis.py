"""Limits shared through real Redis: replicas (instances and processes), a Redis that restarts or goes away."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from gateway.accounting.limits import Admission, Limiter
from gateway.accounting.redis_counters import RedisCounters
from gateway.exceptions import RateLimited
from gateway.keys.store import VirtualKey
from gateway.policy import parse_policy

REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 15, 10, 0, 10, tzinfo=UTC).timestamp()
SPEND_KEY = "spend:team:2026-11:research"


class Ledger:
    """A fake `spend_source` holding this month's spend per team and key."""

    def __init__(self) -> None:
        self.teams: dict[str, Decimal] = {}
        self.keys: dict[str, Decimal] = {}
        self.calls = 0

    def add(self, usd: Decimal, team: str = "research", key: str = "key_a") -> None:
        self.teams[team] = self.teams.get(team, Decimal(0)) + usd
        self.keys[key] = self.keys.get(key, Decimal(0)) + usd

    async def __call__(self, since: datetime, by: Literal["team", "key"]) -> dict[str, Decimal]:
        self.calls += 1
        return dict(self.teams if by == "team" else self.keys)


def make_key(key_id: str = "key_a", team: str = "research") -> VirtualKey:
    return VirtualKey(key_id, team, "tg-x…", None, None, datetime.fromtimestamp(NOW, UTC), None)


@pytest.fixture
async def raw_redis() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.ConnectionError, OSError):
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(raw_redis: redis.Redis) -> AsyncIterator[str]:
    name = f"tollgate-test:{uuid.uuid4().hex}:"
    yield name
    await delete_prefixed(raw_redis, name)


async def delete_prefixed(client: redis.Redis, prefix: str) -> int:
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    return int(await client.delete(*keys)) if keys else 0


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


Factory = Callable[..., Awaitable[Limiter]]


@pytest.fixture
async def replica(prefix: str, ledger: Ledger) -> AsyncIterator[Factory]:
    """Builds limiters sharing one Redis prefix and one ledger: gateway replicas, as far as Redis can tell."""
    started: list[Limiter] = []

    async def make(limits: dict[str, Any], url: str = REDIS_URL, **options: Any) -> Limiter:
        policy = parse_policy({"limits": limits}, "test.yaml", {})
        store = RedisCounters.from_url(url, prefix=prefix, timeout=0.3)
        limiter = Limiter(policy.limits, ledger, redis=store, clock=lambda: NOW, reconcile_seconds=0, **options)
        await limiter.start()
        started.append(limiter)
        return limiter

    yield make
    for limiter in started:
        await limiter.stop()


async def try_admit(limiter: Limiter, key: VirtualKey, tokens: int = 1) -> Admission | None:
    try:
        return await limiter.admit(key, tokens)
    except RateLimited:
        return None


async def test_two_replicas_hold_an_rpm_together_under_concurrency(replica: Factory) -> None:
    a, b = await replica({"teams": {"research": {"rpm": 37}}}), await replica({"teams": {"research": {"rpm": 37}}})
    key = make_key()

    results = await asyncio.gather(*(try_admit(a if i % 2 else b, key) for i in range(100)))

    assert sum(r is not None for r in results) == 37


async def test_two_replicas_hold_a_tpm_with_overshoot_bounded_by_requests_in_flight(replica: Factory) -> None:
    a, b = await replica({"keys": {"tpm": 1000}}), await replica({"keys": {"tpm": 1000}})
    key = make_key()
    in_flight = [x for x in [await try_admit(r, key, 300) for r in (a, b, a, b)] if x is not None]
    assert len(in_flight) == 3  # 900 reserved; a fourth 300 would pass the limit

    # Each used 400 instead of the estimated 300: the overshoot is what the admitted requests used beyond it.
    for replica_, admission in zip((a, b, a), in_flight, strict=True):
        await replica_.settle(admission, 400, None)
    await a.flush()
    await b.flush()

    assert await try_admit(b, key, 1) is None
    with pytest.raises(RateLimited, match="used 1200"):
        await a.admit(key, 1)


async def test_two_replicas_share_a_budget(replica: Factory, raw_redis: redis.Redis, prefix: str) -> None:
    limits = {"teams": {"research": {"budget_usd": 1}}}
    a, b = await replica(limits), await replica(limits)
    key = make_key()

    admitted = 0
    for limiter in (a, b) * 4:
        admission = await try_admit(limiter, key)
        if admission is not None:
            admitted += 1
            await limiter.settle(admission, 1, Decimal("0.3"))
            await limiter.flush()  # what another replica sees at once; otherwise within flush_seconds

    assert admitted == 4  # 0, 0.3, 0.6 and 0.9 are below $1
    assert await raw_redis.get(prefix + SPEND_KEY) == b"1200000000"


HAMMER = """
import asyncio, sys
from datetime import datetime, UTC
from gateway.accounting.limits import Limiter
from gateway.accounting.redis_counters import RedisCounters
from gateway.exceptions import RateLimited
from gateway.keys.store import VirtualKey
from gateway.policy import parse_policy

async def main(url, prefix, now, limit, attempts):
    limits = parse_policy({"limits": {"teams": {"research": {"rpm": limit}}}}, "hammer", {}).limits
    async def no_spend(since, by):
        return {}
    store = RedisCounters.from_url(url, prefix=prefix)
    limiter = Limiter(limits, no_spend, redis=store, clock=lambda: now, reconcile_seconds=0)
    await limiter.start()
    key = VirtualKey("key_" + prefix[-6:], "research", "tg-x", None, None, datetime.now(UTC), None)
    gate = asyncio.Semaphore(20)
    admitted = 0
    async def one():
        nonlocal admitted
        async with gate:
            try:
                await limiter.admit(key, 1)
                admitted += 1
            except RateLimited:
                pass
    print("ready", flush=True)
    sys.stdin.readline()
    await asyncio.gather(*(one() for _ in range(attempts)))
    print(admitted, limiter.healthy, flush=True)
    await limiter.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
"""


async def test_settles_travel_with_the_next_admission_or_after_flush_seconds(
    replica: Factory, raw_redis: redis.Redis, prefix: str
) -> None:
    limits = {"teams": {"research": {"budget_usd": 10}}}
    quiet, busy = await replica(limits, flush_seconds=0.05), await replica(limits, flush_seconds=3600)
    key = make_key()

    await busy.settle(await busy.admit(key, 1), 1, Decimal(1))
    assert await raw_redis.get(prefix + SPEND_KEY) == b"0"  # settle did no I/O
    await busy.admit(key, 1)  # one script call: the settle first, then the checks
    assert await raw_redis.get(prefix + SPEND_KEY) == b"1000000000"

    await quiet.settle(await quiet.admit(key, 1), 1, Decimal(2))
    await quiet.settle(await quiet.admit(key, 1), 1, Decimal(3))  # merged with the one before
    await asyncio.sleep(0.2)
    assert await raw_redis.get(prefix + SPEND_KEY) == b"6000000000"


def test_two_processes_hammering_one_redis_admit_exactly_the_limit(tmp_path: Path, prefix: str) -> None:
    script = tmp_path / "hammer.py"
    script.write_text(textwrap.dedent(HAMMER), encoding="utf-8")
    # One clock value for both, so the test cannot straddle a minute boundary.
    args = [sys.executable, str(script), REDIS_URL, prefix, str(time.time()), "250", "400"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:  # released together: both are past start-up when the first admission runs
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60)[0].split() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    assert [process.returncode for process in processes] == [0, 0]
    assert all(healthy == "True" for _, healthy in outputs)
    counts = [int(admitted) for admitted, _ in outputs]
    assert sum(counts) == 250
    assert all(count > 0 for count in counts)  # both really competed


async def test_after_a_redis_restart_spend_comes_back_from_the_ledger_neither_zero_nor_doubled(
    replica: Factory, ledger: Ledger, raw_redis: redis.Redis, prefix: str
) -> None:
    limits = {"teams": {"research": {"budget_usd": 10}}}
    a, b = await replica(limits), await replica(limits)
    key = make_key()
    for limiter, cost in ((a, Decimal(1)), (b, Decimal(3))):
        await limiter.settle(await limiter.admit(key, 1), 1, cost)
        await limiter.flush()
        ledger.add(cost)  # what the journal and ledger do for the same request
    assert await raw_redis.get(prefix + SPEND_KEY) == b"4000000000"

    assert await delete_prefixed(raw_redis, prefix) > 0  # Redis restarted without persistence
    await asyncio.gather(a.admit(key, 1), b.admit(key, 1))  # both replicas find the counter missing at once

    assert await raw_redis.get(prefix + SPEND_KEY) == b"4000000000"
    await a.reconcile()  # reconciling a live counter never adds the ledger on top
    assert await raw_redis.get(prefix + SPEND_KEY) == b"4000000000"
    await b.settle(await b.admit(key, 1), 1, Decimal(6))
    await b.flush()
    with pytest.raises(RateLimited, match=r"\$10\.00 of \$10\.00"):
        await a.admit(key, 1)


async def test_a_settle_caught_by_a_restart_is_added_once_the_period_is_seeded_again(
    replica: Factory, ledger: Ledger, raw_redis: redis.Redis, prefix: str
) -> None:
    limiter = await replica({"teams": {"research": {"budget_usd": 10}}}, flush_seconds=3600)
    key = make_key()
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(1))
    await limiter.flush()
    ledger.add(Decimal(1))
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(2))  # buffered, and not in the ledger yet

    await delete_prefixed(raw_redis, prefix)
    await limiter.admit(key, 1)  # carries the 2: held back as unseeded, the period seeded from the ledger's 1
    await asyncio.sleep(0.05)  # the held-back spend is queued again off the request path
    await limiter.flush()

    assert await raw_redis.get(prefix + SPEND_KEY) == b"3000000000"
    assert limiter.lost_settles == 0


async def test_reconciling_raises_a_stale_counter_to_the_ledger(
    replica: Factory, ledger: Ledger, raw_redis: redis.Redis, prefix: str
) -> None:
    limiter = await replica({"teams": {"research": {"budget_usd": 10}}})
    await limiter.settle(await limiter.admit(make_key(), 1), 1, Decimal(2))
    await limiter.flush()
    ledger.add(Decimal(7))  # e.g. Redis came back from an old snapshot, or spend made while it was away

    await limiter.reconcile()

    assert await raw_redis.get(prefix + SPEND_KEY) == b"7000000000"


async def test_an_unreachable_redis_falls_back_to_in_process_counters(replica: Factory) -> None:
    limiter = await replica({"teams": {"research": {"rpm": 2}}}, url="redis://127.0.0.1:1/0")
    key = make_key()

    started = time.perf_counter()
    results = [await try_admit(limiter, key) for _ in range(3)]

    assert not limiter.healthy
    assert [r is not None for r in results] == [True, True, False]  # still limited, per replica
    assert (limiter.redis_outages, limiter.fallback_admissions) == (1, 3)
    assert time.perf_counter() - started < 0.5  # requests never wait on the dead Redis


class Proxy:
    """A TCP forwarder to Redis that can be cut and restored: Redis going away without touching the real one."""

    def __init__(self) -> None:
        target = urlsplit(REDIS_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, upstream_writer]
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_redis_going_away_and_coming_back(
    replica: Factory, ledger: Ledger, raw_redis: redis.Redis, prefix: str
) -> None:
    proxy = Proxy()
    await proxy.start()
    limiter = await replica({"teams": {"research": {"budget_usd": 10}}}, url=proxy.url, reconnect_seconds=0.05)
    key = make_key()
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(2))
    await limiter.flush()
    ledger.add(Decimal(2))
    assert limiter.healthy

    await proxy.stop()
    during = await limiter.admit(key, 1)  # no error: served from in-process counters seeded from the ledger
    assert not limiter.healthy
    await limiter.settle(during, 1, Decimal(3))
    ledger.add(Decimal(3))
    assert ledger.calls == 2  # start, then the fallback's own seeding

    await proxy.start()
    for _ in range(100):
        if limiter.healthy:
            break
        await asyncio.sleep(0.05)

    assert limiter.healthy
    assert limiter.redis_outages == 1
    # Redis kept its 2 but missed the outage's 3: re-seeding raised it to the ledger's 5 before traffic came back.
    assert await raw_redis.get(prefix + SPEND_KEY) == b"5000000000"
    await limiter.settle(await limiter.admit(key, 1), 1, Decimal(5))
    with pytest.raises(RateLimited, match=r"\$10\.00 of \$10\.00"):
        await limiter.admit(key, 1)
    await limiter.stop()
    await proxy.stop()
