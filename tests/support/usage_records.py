"""Usage records for ledger and report tests: one with defaults, or many varied ones from a seed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.accounting.records import UsageRecord

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def usage(i: int, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{i:08d}",
        "created_at": T0 + timedelta(minutes=i),
        "team": "team-a",
        "key_id": "key_a",
        "alias": "gpt-test",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "deployment": "openai",
        "endpoint": "chat/completions",
        "status": "ok",
        "http_status": 200,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": Decimal("0.0000045"),
        "usage_source": "reported",
    }
    values.update(fields)
    return UsageRecord(**values)


def varied(n: int, seed: int = 7, days: int = 4) -> list[UsageRecord]:
    """Records over `days` days from T0, three teams, six keys, three models; some unpriced, some failed."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        team = rng.choice(["team-a", "team-b", "team-c"])
        priced = rng.random() > 0.15
        records.append(
            usage(
                i,
                created_at=T0 + timedelta(minutes=rng.randrange(0, days * 24 * 60)),
                team=team,
                key_id=f"key_{team[-1]}{rng.randrange(2)}",
                upstream_model=rng.choice(["gpt-4o-mini", "gpt-4o", "local-llama"]),
                status=rng.choice(["ok", "ok", "ok", "upstream_error", "client_disconnected"]),
                input_tokens=rng.randrange(0, 5000),
                cached_input_tokens=rng.randrange(0, 100),
                output_tokens=rng.randrange(0, 2000),
                reasoning_tokens=rng.randrange(0, 50),
                cost_usd=Decimal(rng.randrange(0, 10**9)).scaleb(-12) if priced else None,
                user=rng.choice([None, "alice", "bob", "=cmd"]),
                tags={"project": rng.choice(["x", "y"])} if rng.random() > 0.1 else {},
            )
        )
    return records


async def eventually(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Polls `predicate` until it holds; fails the test after `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition still false after {seconds}s")
