"""The ledger against real databases (SQLite file, PostgreSQL): batches, rollups, idempotent replays, a full queue,
a database outage, retention, spend_since."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.ledger import Ledger
from gateway.accounting.ledger_store import write_batch
from gateway.database import create_engine
from gateway.migrations import upgrade_head
from gateway.settings import Settings
from support.pg import BACKENDS, TcpProxy, database_url, pg_database
from support.usage_records import T0, eventually, usage, varied


@dataclass
class Db:
    backend: str
    url: str
    engine: AsyncEngine

    async def scalar(self, sql: str) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql))).all()]


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    async with database_url(request.param, tmp_path) as url:
        engine = create_engine(url)
        await upgrade_head(engine)
        yield Db(request.param, url, engine)
        await engine.dispose()


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "ledger_batch_size": 100, "ledger_flush_seconds": 0.01}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def ledger(db: Db, tmp_path: Path) -> AsyncIterator[Ledger]:
    running = Ledger(settings(tmp_path), db.engine)
    await running.start()
    yield running
    await running.stop()


ROLLUP_FROM_RAW = """
SELECT day, team, key_id, upstream_model, count(*),
       sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END),
       sum(input_tokens), sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens),
       coalesce(sum(cost_pico), 0),
       sum(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END),
       sum(CASE WHEN cost_pico IS NULL THEN input_tokens ELSE 0 END),
       sum(CASE WHEN cost_pico IS NULL THEN output_tokens ELSE 0 END)
FROM usage_records GROUP BY day, team, key_id, upstream_model
"""
ROLLUPS = """
SELECT day, team, key_id, model, requests, error_requests, input_tokens, cached_input_tokens, output_tokens,
       reasoning_tokens, cost_pico, unpriced_requests, unpriced_input_tokens, unpriced_output_tokens
FROM usage_daily
"""


def normalized(rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    return {(str(r[0]), r[1], r[2], r[3], *(int(v) for v in r[4:])) for r in rows}


async def assert_rollups_match_raw(db: Db) -> None:
    assert normalized(await db.rows(ROLLUPS)) == normalized(await db.rows(ROLLUP_FROM_RAW))


async def test_records_reach_the_database_and_the_rollups_equal_the_raw_sums(db: Db, ledger: Ledger) -> None:
    records = varied(600)
    for record in records:
        ledger.record(record)
    async with asyncio.timeout(30):
        await ledger.flush()

    assert await db.scalar("SELECT count(*) FROM usage_records") == 600
    await assert_rollups_match_raw(db)
    exact = sum((r.cost_usd for r in records if r.cost_usd is not None), Decimal(0))
    assert Decimal(int(await db.scalar("SELECT sum(cost_pico) FROM usage_daily"))).scaleb(-12) == exact
    unpriced = sum(1 for r in records if r.cost_usd is None)
    assert int(await db.scalar("SELECT sum(unpriced_requests) FROM usage_daily")) == unpriced
    assert ledger.lag == 0 and ledger.healthy
    assert ledger.stats.written == 600 and ledger.stats.duplicates == 0


async def test_a_stored_record_keeps_every_field(db: Db, ledger: Ledger) -> None:
    record = usage(
        1,
        user="alice",
        tags={"project": "x", "env": "prod"},
        ttft_ms=12.5,
        trace_id="ab" * 16,
        cost_usd=Decimal("0.123456789012"),
    )
    ledger.record(record)
    async with asyncio.timeout(10):
        await ledger.flush()
    (row,) = await db.rows(
        "SELECT request_id, team, key_id, end_user, cost_pico, ttft_ms, trace_id, day FROM usage_records"
    )
    assert row[:7] == ("req_00000001", "team-a", "key_a", "alice", 123456789012, 12.5, "ab" * 16)
    assert str(row[7]) == "2026-11-02"


async def test_replaying_the_same_records_stores_each_once_and_leaves_rollups_unchanged(db: Db, tmp_path: Path) -> None:
    records = varied(300)
    assert await write_batch(db.engine, records) == 300
    rollups = normalized(await db.rows(ROLLUPS))

    # Again through the batch writer, and a subset mixed with new records.
    assert await write_batch(db.engine, records) == 0
    assert await write_batch(db.engine, [*records[:50], usage(10_000)]) == 1
    # And once more from a journal segment left by a "dead" process.
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "usage-1-99999-000001.jsonl").write_bytes(b"".join(r.to_json() + b"\n" for r in records))
    replayer = Ledger(settings(tmp_path), db.engine)
    await replayer.start()
    async with asyncio.timeout(30):
        await replayer.flush()
    await replayer.stop()

    assert replayer.stats.duplicates == 300 and replayer.stats.written == 0
    assert await db.scalar("SELECT count(*) FROM usage_records") == 301
    # Only the one new record reached the rollups.
    new_day = ("2026-11-09", "team-a", "key_a", "gpt-4o-mini", 1, 0, 10, 0, 5, 0, 4_500_000, 0, 0, 0)
    assert normalized(await db.rows(ROLLUPS)) == rollups | {new_day}
    await assert_rollups_match_raw(db)
    assert list(journal.glob("usage-*.jsonl")) == []


async def test_duplicates_inside_one_batch_count_once(db: Db) -> None:
    assert await write_batch(db.engine, [usage(1), usage(1), usage(2)]) == 2
    assert int(await db.scalar("SELECT sum(requests) FROM usage_daily")) == 2


async def test_records_that_overflow_the_queue_are_replayed_from_the_journal(db: Db, tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path, ledger_flush_seconds=30), db.engine, queue_size=5)
    await ledger.start()
    try:
        for i in range(50):
            ledger.record(usage(i))
        assert ledger.stats.overflowed == 45 and ledger.lag == 50
        async with asyncio.timeout(30):
            await ledger.flush()
        assert await db.scalar("SELECT count(*) FROM usage_records") == 50
        assert int(await db.scalar("SELECT sum(requests) FROM usage_daily")) == 50
        assert ledger.lag == 0
    finally:
        await ledger.stop()
    assert list((tmp_path / "journal").glob("usage-*.jsonl")) == []


async def test_segments_rotate_under_steady_traffic_and_go_once_committed(db: Db, tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path, ledger_batch_size=10), db.engine, segment_bytes=3000)
    await ledger.start()
    try:
        for i in range(200):
            ledger.record(usage(i))
            if i % 5 == 0:
                await asyncio.sleep(0.005)  # steady traffic: the writer always finds something queued
        async with asyncio.timeout(20):
            await ledger.flush()
        await eventually(lambda: len(list((tmp_path / "journal").glob("usage-*.jsonl"))) == 1)
        (active,) = ledger.journal.segments
        assert int(active.path.stem.rsplit("-", 1)[1]) > 10  # its sequence number: it did rotate, many times
    finally:
        await ledger.stop()
    assert await db.scalar("SELECT count(*) FROM usage_records") == 200


async def test_flush_seconds_zero_writes_without_waiting_for_a_batch(db: Db, tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path, ledger_flush_seconds=0), db.engine, maintenance_seconds=3600)
    await ledger.start()
    try:
        for i in range(3):
            ledger.record(usage(i))
        await eventually(lambda: ledger.lag == 0, seconds=5)  # no flush() call: the writer went by itself
    finally:
        await ledger.stop()
    assert await db.scalar("SELECT count(*) FROM usage_records") == 3


async def test_stop_writes_what_is_queued_and_leaves_no_journal(db: Db, tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path, ledger_flush_seconds=60), db.engine)
    await ledger.start()
    for i in range(30):
        ledger.record(usage(i))
    await ledger.stop()
    assert await db.scalar("SELECT count(*) FROM usage_records") == 30
    assert list((tmp_path / "journal").iterdir()) == []


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_is_written(db: Db, ledger: Ledger) -> None:
    poison = usage(2, status=None)  # NOT NULL: refused on every backend, however often it is retried
    for record in (usage(1), poison, usage(3)):
        ledger.record(record)
    async with asyncio.timeout(20):
        await ledger.flush()
    assert await db.scalar("SELECT count(*) FROM usage_records") == 2
    assert ledger.stats.rejected == 1 and ledger.healthy
    rejected = ledger.journal.directory / "rejected.jsonl"
    assert rejected.read_bytes() == poison.to_json() + b"\n"


async def test_client_supplied_text_never_fails_a_batch(db: Db, ledger: Ledger) -> None:
    ledger.record(usage(1, user="nul\x00byte" + "u" * 1000, tags={"k\x00": "v\x00" * 3}))
    async with asyncio.timeout(20):
        await ledger.flush()
    assert await db.scalar("SELECT end_user FROM usage_records") == "nulbyte" + "u" * 249
    assert ledger.stats.rejected == 0


async def test_retention_deletes_old_raw_rows_and_keeps_rollups(db: Db, tmp_path: Path) -> None:
    records = [usage(i, created_at=datetime(2026, 11, 1 + i % 10, 12, tzinfo=UTC)) for i in range(100)]
    await write_batch(db.engine, records)
    rollups = normalized(await db.rows(ROLLUPS))
    ledger = Ledger(settings(tmp_path, ledger_retention_days=3), db.engine)

    # "Today" is 2026-11-10: days before 2026-11-07 go; the 7th, 8th, 9th and 10th stay.
    deleted = await ledger.apply_retention(today=date(2026, 11, 10))

    assert deleted == 60
    assert str(await db.scalar("SELECT min(day) FROM usage_records")) == "2026-11-07"
    assert normalized(await db.rows(ROLLUPS)) == rollups
    assert await Ledger(settings(tmp_path), db.engine).apply_retention() == 0  # 0 days: keep everything


async def test_spend_since_is_exact_per_team_and_key_and_ignores_unpriced(db: Db, ledger: Ledger) -> None:
    records = varied(400)
    for record in records:
        ledger.record(record)
    async with asyncio.timeout(30):
        await ledger.flush()
    since = T0 + timedelta(hours=7, minutes=13)  # a partial first day: raw rows, then whole days from rollups

    by_team = await ledger.spend_since(since, "team")
    by_key = await ledger.spend_since(since, "key")

    def expected(field: str) -> dict[str, Decimal]:
        sums: dict[str, Decimal] = {}
        for r in records:
            if r.cost_usd is not None and r.created_at >= since:
                name = getattr(r, field)
                sums[name] = sums.get(name, Decimal(0)) + r.cost_usd
        return sums

    assert by_team == expected("team")
    assert by_key == expected("key_id")
    assert all(isinstance(v, Decimal) for v in by_team.values())


async def test_costs_finer_than_a_picodollar_are_counted_as_rounded(db: Db, ledger: Ledger) -> None:
    ledger.record(usage(1, cost_usd=Decimal("0.0000000000015")))
    ledger.record(usage(2, cost_usd=Decimal("0.000000000002")))
    async with asyncio.timeout(10):
        await ledger.flush()
    assert ledger.stats.rounded_costs == 1
    assert await db.scalar("SELECT sum(cost_pico) FROM usage_records") == 4  # 1.5 rounds half-even to 2


async def test_a_database_outage_grows_the_journal_and_the_ledger_catches_up(tmp_path: Path) -> None:
    async with pg_database() as direct_url:
        proxy = TcpProxy()
        await proxy.start()
        database = direct_url.rsplit("/", 1)[1]
        direct = create_engine(direct_url)
        await upgrade_head(direct)
        through_proxy = create_engine(proxy.url(database))
        ledger = Ledger(
            settings(tmp_path, ledger_batch_size=20), through_proxy, queue_size=40, max_backoff=0.2, write_timeout=3
        )
        await ledger.start()
        try:
            for i in range(30):
                ledger.record(usage(i))
            async with asyncio.timeout(10):
                await ledger.flush()
            assert ledger.healthy

            await proxy.cut()
            for i in range(30, 230):
                ledger.record(usage(i))  # the request path carries on: nothing raises, nothing waits
            await eventually(lambda: not ledger.healthy)
            assert ledger.lag == 200
            assert ledger.stats.overflowed >= 160
            journaled = sum(p.read_bytes().count(b"\n") for p in (tmp_path / "journal").glob("usage-*.jsonl"))
            assert journaled == 230
            assert ledger.last_error is not None
            await asyncio.sleep(0.5)  # a few retries while it is down
            assert ledger.stats.db_errors >= 2

            await proxy.start()
            async with asyncio.timeout(30):
                await ledger.flush()
            assert ledger.healthy and ledger.lag == 0
        finally:
            await ledger.stop()
            await proxy.cut()
            await through_proxy.dispose()
        db = Db("postgresql", direct_url, direct)
        assert await db.scalar("SELECT count(*) FROM usage_records") == 230
        assert int(await db.scalar("SELECT sum(requests) FROM usage_daily")) == 230
        await assert_rollups_match_raw(db)
        assert list((tmp_path / "journal").glob("usage-*.jsonl")) == []
        await direct.dispose()


async def test_a_hung_database_times_out_and_the_ledger_catches_up_when_it_answers(tmp_path: Path) -> None:
    async with pg_database() as direct_url:
        direct = create_engine(direct_url)
        await upgrade_head(direct)
        proxy = TcpProxy()
        await proxy.start()
        through_proxy = create_engine(proxy.url(direct_url.rsplit("/", 1)[1]))
        ledger = Ledger(settings(tmp_path, ledger_batch_size=10), through_proxy, max_backoff=0.1, write_timeout=0.3)
        await ledger.start()
        try:
            ledger.record(usage(0))
            async with asyncio.timeout(10):
                await ledger.flush()
            proxy.stall()
            for i in range(1, 50):
                ledger.record(usage(i))
            await eventually(lambda: ledger.stats.errors.get("TimeoutError", 0) >= 2)
            assert not ledger.healthy and ledger.lag == 49
            proxy.resume()
            async with asyncio.timeout(30):
                await ledger.flush()
            assert ledger.healthy
        finally:
            await ledger.stop()
            await proxy.cut()
            await through_proxy.dispose()
        async with direct.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar() == 50
            assert (await conn.execute(text("SELECT sum(requests) FROM usage_daily"))).scalar() == 50
        await direct.dispose()


async def test_a_database_down_at_start_does_not_stop_the_ledger(tmp_path: Path) -> None:
    async with pg_database() as direct_url:
        direct = create_engine(direct_url)
        await upgrade_head(direct)
        proxy = TcpProxy()
        await proxy.start()
        await proxy.cut()  # down before the ledger starts
        through_proxy = create_engine(proxy.url(direct_url.rsplit("/", 1)[1]))
        journal = tmp_path / "journal"
        journal.mkdir()
        shutil.copyfile(__file__, tmp_path / "unrelated.txt")  # other files in the data dir are left alone
        (journal / "usage-1-99999-000001.jsonl").write_bytes(usage(1).to_json() + b"\n")
        ledger = Ledger(settings(tmp_path), through_proxy, max_backoff=0.1)
        await ledger.start()
        try:
            ledger.record(usage(2))
            await asyncio.sleep(0.3)
            assert ledger.lag == 2 and not ledger.healthy
            await proxy.start()
            async with asyncio.timeout(20):
                await ledger.flush()
        finally:
            await ledger.stop()
            await proxy.cut()
            await through_proxy.dispose()
        assert (tmp_path / "unrelated.txt").exists()
        async with direct.connect() as conn:
            ids = (await conn.execute(text("SELECT request_id FROM usage_records ORDER BY 1"))).scalars().all()
        assert ids == ["req_00000001", "req_00000002"]
        await direct.dispose()
