"""Reading usage records back in end-to-end metering tests, and the independent figures tests compare them with.

Records are read from the database the gateway writes: through a running in-thread gateway's own ledger and
engine (`records_of`, which flushes the ledger first, on the gateway's loop), or straight from a store URL for a
gateway running as its own process (`store_records`). Expected costs come from litellm's price map read here with
`Decimal` (not through `gateway.accounting.pricing`), and expected token counts from tiktoken with the cookbook's
chat rules (not through `gateway.accounting.tokens`, whose only use here is loading the encoding from local files).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.pricing import litellm_price_map
from gateway.accounting.schema import from_pico, usage_daily, usage_records
from gateway.accounting.tokens import get_encoding
from gateway.database import create_engine
from support.gateway import RunningGateway


@dataclass(frozen=True)
class StoredRecord:
    """One `usage_records` row as the tests read it (cost back in USD)."""

    request_id: str
    team: str
    key_id: str
    alias: str
    provider: str
    upstream_model: str
    deployment: str
    endpoint: str
    status: str
    http_status: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None
    usage_source: str
    user: str | None
    tags: dict[str, str]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredRecord:
        tags = row["tags"]
        if isinstance(tags, str):  # SQLite's JSON as text, depending on the driver
            tags = json.loads(tags)
        return cls(
            request_id=row["request_id"],
            team=row["team"],
            key_id=row["key_id"],
            alias=row["alias"],
            provider=row["provider"],
            upstream_model=row["upstream_model"],
            deployment=row["deployment"],
            endpoint=row["endpoint"],
            status=row["status"],
            http_status=row["http_status"],
            input_tokens=row["input_tokens"],
            cached_input_tokens=row["cached_input_tokens"],
            output_tokens=row["output_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
            cost_usd=from_pico(row["cost_pico"]) if row["cost_pico"] is not None else None,
            usage_source=row["usage_source"],
            user=row["end_user"],
            tags=dict(tags or {}),
        )


async def select_records(engine: AsyncEngine, team: str | None = None) -> list[StoredRecord]:
    stmt = select(usage_records)
    if team is not None:
        stmt = stmt.where(usage_records.c.team == team)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [StoredRecord.from_row(dict(row)) for row in rows]


async def rollup_request_count(engine: AsyncEngine) -> int:
    """Requests counted by the daily rollups: equal to the raw row count when nothing was counted twice."""
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.coalesce(func.sum(usage_daily.c.requests), 0)))).scalar_one()
    return int(total)


# -- an in-thread gateway (support.gateway.run_gateway) ---------------------------------------------------------


def on_gateway_loop(gateway: RunningGateway, work: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 30) -> Any:
    """Runs `work()` on the gateway's own event loop (its engine and ledger belong to it)."""
    assert gateway.app is not None, "an in-thread gateway (run_gateway) is needed"
    return asyncio.run_coroutine_threadsafe(work(), gateway.app.ledger.loop).result(timeout)


def records_of(gateway: RunningGateway, team: str, flush_timeout: float = 10) -> list[StoredRecord]:
    """The team's records in the gateway's database, after everything journaled so far has been written."""
    assert gateway.app is not None
    app = gateway.app

    async def read() -> list[StoredRecord]:
        async with asyncio.timeout(flush_timeout):
            await app.ledger.flush()
        return await select_records(app.engine, team)

    result: list[StoredRecord] = on_gateway_loop(gateway, read, flush_timeout + 10)
    return result


def wait_for_records(gateway: RunningGateway, team: str, count: int, timeout: float = 10) -> list[StoredRecord]:
    """The team's records once there are at least `count` of them (a record may be made after the client left)."""
    deadline = time.monotonic() + timeout
    while True:
        found = records_of(gateway, team)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- a gateway process, read through its store URL --------------------------------------------------------------


def store_records(url: str) -> tuple[list[StoredRecord], int]:
    """Every record in the store at `url`, and the request count of its daily rollups."""

    async def read() -> tuple[list[StoredRecord], int]:
        engine = create_engine(url)
        try:
            return await select_records(engine), await rollup_request_count(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


# -- independent expectations -----------------------------------------------------------------------------------


@cache
def price_map() -> dict[str, Any]:
    path = litellm_price_map()
    assert path is not None, "litellm's bundled price map is needed"
    data: dict[str, Any] = json.loads(path.read_bytes(), parse_float=Decimal)
    return data


def expected_cost(model: str, prompt: int, cached: int, completion: int, reasoning: int) -> Decimal:
    """Cost from the price map entry of `model`: cached input at `cache_read_input_token_cost`, reasoning output at
    `output_cost_per_reasoning_token` when the entry has one (OpenAI bills it as output otherwise)."""
    entry = price_map()[model]
    rate_in = Decimal(entry["input_cost_per_token"])
    rate_cached = Decimal(entry.get("cache_read_input_token_cost", rate_in))
    rate_out = Decimal(entry["output_cost_per_token"])
    rate_reasoning = Decimal(entry.get("output_cost_per_reasoning_token", rate_out))
    return (
        (prompt - cached) * rate_in
        + cached * rate_cached
        + (completion - reasoning) * rate_out
        + reasoning * rate_reasoning
    )


def tiktoken_text(text: str, encoding: str = "o200k_base") -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


def tiktoken_chat_prompt(messages: Sequence[Mapping[str, str]], encoding: str = "o200k_base") -> int:
    """Prompt tokens of plain text messages as OpenAI bills them (cookbook, "How to count tokens with tiktoken"):
    3 per message, its role and content, 1 more for a name, and 3 priming the reply."""
    total = 3
    for message in messages:
        total += 3 + sum(tiktoken_text(value, encoding) for value in message.values())
        if "name" in message:
            total += 1
    return total
