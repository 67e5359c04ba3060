"""The ledger's SQL writes, the same on SQLite and PostgreSQL (SQLAlchemy Core; the dialect only picks the
`INSERT ... ON CONFLICT` construct, which both spell alike).

`write_batch` is the one way rows get in (the ledger's writer, journal replays, the scale benchmark): one
transaction inserts the raw rows with `ON CONFLICT (request_id) DO NOTHING RETURNING request_id` and adds exactly the
rows it got back to the daily rollups, so a record written twice is stored once and counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date
from typing import Any

from sqlalchemy import String, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.records import UsageRecord
from gateway.accounting.schema import ROLLUP_SUMS, to_pico, usage_daily, usage_records

_STRING_LIMITS = {c.name: c.type.length for c in usage_records.columns if isinstance(c.type, String) and c.type.length}


def record_row(record: UsageRecord) -> dict[str, Any]:
    created = record.created_at
    # A naive timestamp can only be UTC here (UsageRecord says so); refusing it would block the whole batch.
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    row: dict[str, Any] = {
        "request_id": record.request_id,
        "created_at": created,
        "day": created.date(),
        "team": record.team,
        "key_id": record.key_id,
        "alias": record.alias,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "deployment": record.deployment,
        "endpoint": record.endpoint,
        "status": record.status,
        "http_status": record.http_status,
        "input_tokens": record.input_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "output_tokens": record.output_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_pico": to_pico(record.cost_usd) if record.cost_usd is not None else None,
        "usage_source": record.usage_source,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "trace_id": record.trace_id,
        "end_user": record.user,
        "tags": dict(record.tags),
    }
    # Client-supplied text (the OpenAI `user` field, tags) must not make a row, and so its batch, fail: too long for
    # the column, or with a NUL byte, which PostgreSQL refuses in text and JSON.
    # Checked inline: this runs for every record, and almost every value passes untouched.
    for name, limit in _STRING_LIMITS.items():
        value = row[name]
        if value.__class__ is str and (len(value) > limit or "\x00" in value):
            row[name] = value.replace("\x00", "")[:limit]
    if record.tags:
        row["tags"] = {_clean(str(k)): _clean(str(v)) for k, v in record.tags.items()}
    return row


def _clean(value: str) -> str:
    return value.replace("\x00", "") if "\x00" in value else value


def rollup_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Daily rollup increments for raw rows, one per (day, team, key, model), in primary-key order so that two
    writers upserting overlapping keys lock them in the same order (no deadlock on PostgreSQL)."""
    sums: dict[tuple[date, str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["day"], row["team"], row["key_id"], row["upstream_model"])
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = {"day": key[0], "team": key[1], "key_id": key[2], "model": key[3]}
            acc.update(dict.fromkeys(ROLLUP_SUMS, 0))
        unpriced = row["cost_pico"] is None
        acc["requests"] += 1
        acc["error_requests"] += row["status"] != "ok"
        acc["input_tokens"] += row["input_tokens"]
        acc["cached_input_tokens"] += row["cached_input_tokens"]
        acc["output_tokens"] += row["output_tokens"]
        acc["reasoning_tokens"] += row["reasoning_tokens"]
        if unpriced:
            acc["unpriced_requests"] += 1
            acc["unpriced_input_tokens"] += row["input_tokens"]
            acc["unpriced_output_tokens"] += row["output_tokens"]
        else:
            acc["cost_pico"] += row["cost_pico"]
    return [sums[key] for key in sorted(sums)]


def _dialect_insert(engine: AsyncEngine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


async def write_batch(engine: AsyncEngine, records: Sequence[UsageRecord]) -> int:
    """Inserts the records not yet stored and adds them to the rollups, in one transaction. Returns how many rows
    were new (the others were already there: a replay)."""
    unique = {record.request_id: record for record in records}
    rows = [record_row(unique[request_id]) for request_id in sorted(unique)]
    if not rows:
        return 0
    insert = _dialect_insert(engine)
    raw = (
        insert(usage_records)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(usage_records.c.request_id)
    )
    upsert = insert(usage_daily)
    upsert = upsert.on_conflict_do_update(
        index_elements=["day", "team", "key_id", "model"],
        set_={name: usage_daily.c[name] + upsert.excluded[name] for name in ROLLUP_SUMS},
    )
    async with engine.begin() as conn:
        inserted = set((await conn.execute(raw, rows)).scalars())
        increments = rollup_rows(row for row in rows if row["request_id"] in inserted)
        if increments:
            await conn.execute(upsert, increments)
    return len(inserted)


async def delete_raw_before(engine: AsyncEngine, cutoff: date) -> int:
    """Deletes raw rows of days before `cutoff`, a day per transaction so that no lock is held for long.
    Rollups are kept."""
    deleted = 0
    while True:
        async with engine.begin() as conn:
            oldest = (await conn.execute(select(func.min(usage_records.c.day)))).scalar()
            if oldest is None or oldest >= cutoff:
                return deleted
            result = await conn.execute(delete(usage_records).where(usage_records.c.day == oldest))
            deleted += result.rowcount
