"""Rate limits and budgets shared by two `tollgate serve` processes through Redis (and one PostgreSQL ledger).

Redis counters have no per-deployment prefix setting (`build_limiter` takes `key_prefix`, settings do not pass
one), so each test module gets team names of its own and a Redis logical database of its own (`REDIS_DB`), and
deletes only that database's keys of its teams and the seed markers. Redis itself is never restarted or flushed.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from support.gateway import GatewayProcess, gateway_process
from support.metering import store_records
from support.pg import create_database, drop_database, pg_url

REDIS_DB = 11
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
PREFIX = "tollgate:"  # build_limiter's default
RPM = 30
# mock/echo usage counts words (+3 per message): "hi" costs 4 + 1 tokens, at $0.20 a token $1.00 a request.
BUDGET = "2.5"
PRICE_PER_MILLION = 200_000
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Pair:
    a: GatewayProcess
    b: GatewayProcess
    database: str
    rate_team: str
    budget_team: str


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = asyncio.run(create_database())
    try:
        yield name
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def raw_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()


def delete_keys(client: redis.Redis, *teams: str) -> int:
    """The keys of these teams in this module's Redis database, and the seed markers: what a restart loses."""
    keys = [key for team in teams for key in client.scan_iter(match=f"{PREFIX}*:{team}")]
    keys += list(client.scan_iter(match=f"{PREFIX}seeded:*"))
    return int(client.delete(*keys)) if keys else 0


@pytest.fixture(scope="module")
def pair(database: str, raw_redis: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    suffix = uuid.uuid4().hex[:10]
    rate_team, budget_team = f"rpm-{suffix}", f"budget-{suffix}"
    directory = tmp_path_factory.mktemp("limits")
    policy = directory / "policy.yaml"
    policy.write_text(
        f"""
models:
  - alias: "mock/*"
    deployments: [{{provider: mock}}]
limits:
  teams:
    {rate_team}: {{rpm: {RPM}}}
    {budget_team}: {{budget_usd: {BUDGET}, period: month}}
prices:
  mock/echo: {{input: {PRICE_PER_MILLION}, output: {PRICE_PER_MILLION}}}
"""
    )
    env = {"DATABASE_URL": pg_url(database), "REDIS_URL": REDIS_URL, "TOLLGATE_LEDGER_FLUSH_SECONDS": "0.05"}
    a_dir, b_dir = directory / "a", directory / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    try:
        with gateway_process(policy, a_dir, env=env) as a, gateway_process(policy, b_dir, env=env) as b:
            yield Pair(a, b, database, rate_team, budget_team)
    finally:
        delete_keys(raw_redis, rate_team, budget_team)


def client(process: GatewayProcess, key: str) -> OpenAI:
    return OpenAI(base_url=process.gateway.base_url, api_key=key, max_retries=0, timeout=20)


def wait_for_a_fresh_minute(needed: float = 15.0) -> None:
    """Rate windows are UTC minutes: start a burst with at least `needed` seconds of its minute left."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.1)


def warm_key(process: GatewayProcess, key: str) -> None:
    """Authenticates the key once on this process (a cached lookup later), without using any rate limit."""
    response = httpx.get(process.gateway.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def assert_openai_rate_limit(error: openai.RateLimitError, code: str) -> dict[str, Any]:
    assert error.status_code == 429
    retry_after = int(error.response.headers["retry-after"])
    # Seconds to the next minute for a rate limit, to the end of the period for a budget.
    assert retry_after >= 1
    if code == "rate_limit_exceeded":
        assert retry_after <= 60
    body: dict[str, Any] = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == code
    assert error.code == code
    details: dict[str, Any] = body["error"]
    return details


def test_two_processes_sharing_redis_admit_exactly_the_rpm_and_refuse_the_rest_the_openai_way(pair: Pair) -> None:
    key = pair.a.gateway.create_key(pair.rate_team)
    for process in (pair.a, pair.b):
        # Counting in Redis, not per process (a fallback to local counters would admit RPM per process).
        assert httpx.get(process.gateway.url + "/readyz", timeout=5).json()["checks"]["limits"] == "ok"
        warm_key(process, key)
    per_thread, threads = 12, 8
    outcomes: list[tuple[str, int, openai.RateLimitError | None]] = []
    lock = threading.Lock()

    def hammer(process: GatewayProcess, name: str) -> None:
        sdk = client(process, key)
        for _ in range(per_thread):
            try:
                sdk.chat.completions.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]
                result: tuple[str, int, openai.RateLimitError | None] = (name, 200, None)
            except openai.RateLimitError as exc:
                result = (name, 429, exc)
            with lock:
                outcomes.append(result)

    wait_for_a_fresh_minute()
    minute = int(time.time() // 60)
    workers = [threading.Thread(target=hammer, args=(pair.a, "a") if i % 2 else (pair.b, "b")) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert int(time.time() // 60) == minute, "the burst straddled a minute boundary"

    assert len(outcomes) == per_thread * threads
    admitted = [name for name, status, _ in outcomes if status == 200]
    assert len(admitted) == RPM
    assert {"a", "b"} <= set(admitted)  # both processes admitted some: one shared counter, not two
    refusals = [exc for _, status, exc in outcomes if exc is not None]
    assert len(refusals) == per_thread * threads - RPM
    for exc in refusals:
        error = assert_openai_rate_limit(exc, "rate_limit_exceeded")
        assert "requests per minute" in error["message"] and pair.rate_team in error["message"]
    # Refused requests never reached an upstream, so they have no usage record.
    records, _ = wait_for_store(pair, pair.rate_team, RPM)
    assert len(records) == RPM


def wait_for_store(pair: Pair, team: str, count: int, timeout: float = 15) -> tuple[list[Any], int]:
    deadline = time.monotonic() + timeout
    while True:
        records, rollups = store_records(pg_url(pair.database))
        mine = [r for r in records if r.team == team]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine, rollups
        time.sleep(0.05)


def test_a_team_budget_spent_through_one_process_is_refused_by_the_other_and_survives_losing_redis(
    pair: Pair, raw_redis: redis.Redis
) -> None:
    key = pair.a.gateway.create_key(pair.budget_team)
    through_a, through_b = client(pair.a, key), client(pair.b, key)

    # $1.00 a request against $2.50: admitted while spent < budget, so three get in.
    for _ in range(3):
        raw = through_a.chat.completions.with_raw_response.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.headers["x-tollgate-cost-usd"] == "$1.000000"
    for sdk in (through_a, through_b):
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]
        error = assert_openai_rate_limit(caught.value, "budget_exceeded")
        assert error["message"].startswith(f"Budget exceeded for team '{pair.budget_team}': $3.00 of $2.50 spent")

    month = datetime.now(UTC).strftime("%Y-%m")
    spend_key = f"{PREFIX}spend:team:{month}:{pair.budget_team}"
    assert raw_redis.get(spend_key) == b"3000000000"  # nano-dollars
    records, _ = wait_for_store(pair, pair.budget_team, 3)
    assert len(records) == 3 and sum(r.cost_usd for r in records) == 3

    # Redis loses everything of ours (a restart without persistence): counters and seed markers.
    assert delete_keys(raw_redis, pair.budget_team) >= 2
    assert raw_redis.get(spend_key) is None

    for sdk in (through_b, through_a):
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="mock/echo", messages=MESSAGES)  # type: ignore[arg-type]
        error = assert_openai_rate_limit(caught.value, "budget_exceeded")
        assert "$3.00 of $2.50 spent" in error["message"]  # rebuilt from the ledger, not reset to $0
    assert raw_redis.get(spend_key) == b"3000000000"
    records, _ = wait_for_store(pair, pair.budget_team, 3)
    assert len(records) == 3  # the refused calls reached no upstream
