"""Report speed at scale: a million ledger rows in PostgreSQL and in SQLite, then the per-team monthly report.

    .venv/bin/python bench/report_scale.py                      # both backends, 1,000,000 rows each
    .venv/bin/python bench/report_scale.py --rows 100000 --backends sqlite

Rows go in through `gateway.accounting.ledger.write_batch`, the ledger's own batch writer (raw rows and their daily
rollups in one transaction, the rollups counting only inserted rows), in batches of `--batch` records. The data:
61 days (2026-10-01 .. 2026-11-30), 20 teams × 10 keys, 6 models, 10 % unpriced, a few users and tags.

Then, after ANALYZE, each report runs once to warm up and `--runs` times timed (median, min, max):

- per-team monthly: November, whole days, so rollups only (the target: under 200 ms);
- per-team, partial days: Nov 1 10:00 .. Nov 20 15:30 (rollups for whole days + raw rows for the two edges);
- per-user monthly: raw rows only (user is not in the rollups), for comparison.

Each report's total is checked, to the picodollar, against `SELECT sum(...)` over the raw rows of the same range.
The result is Markdown for BENCHMARKS.md on stdout (progress on stderr). PostgreSQL: a fresh database on
`--pg-url`'s server, dropped afterwards (`--keep` keeps it); SQLite: a file in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.ledger_store import write_batch
from gateway.accounting.records import UsageRecord
from gateway.accounting.reports import Report, ReportQuery, run_report
from gateway.accounting.schema import from_pico, usd_text
from gateway.database import create_engine
from gateway.migrations import upgrade_head

FIRST_DAY = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 61
MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
PARTIAL = (datetime(2026, 11, 1, 10, tzinfo=UTC), datetime(2026, 11, 20, 15, 30, tzinfo=UTC))
MODELS = ["gpt-4o-mini", "gpt-4o", "o4-mini", "claude-sonnet", "gemini-flash", "local-llama"]
TEAMS = [f"team-{i:02d}" for i in range(20)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generate(n: int, seed: int) -> list[UsageRecord]:
    rng = random.Random(seed)
    span = DAYS * 86_400
    records = []
    for i in range(n):
        team = rng.choice(TEAMS)
        priced = rng.random() >= 0.10
        input_tokens = rng.randrange(10, 4000)
        output_tokens = rng.randrange(0, 1500)
        records.append(
            UsageRecord(
                request_id=f"req_{i:012d}",
                created_at=FIRST_DAY + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6)),
                team=team,
                key_id=f"key_{team[-2:]}_{rng.randrange(10)}",
                alias="default",
                provider="openai",
                upstream_model=rng.choice(MODELS),
                deployment="openai",
                endpoint="chat/completions",
                status="ok" if rng.random() > 0.03 else "upstream_error",
                http_status=200,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                # Whole picodollars: a price of up to six decimals per million tokens times a token count.
                cost_usd=Decimal(input_tokens * 150_000 + output_tokens * 600_000).scaleb(-12) if priced else None,
                usage_source="reported",
                latency_ms=rng.random() * 2000,
                user=rng.choice([None, "alice", "bob", "carol", "dave"]),
                tags={"project": rng.choice(["search", "chat", "batch"])},
            )
        )
    return records


async def load(engine: AsyncEngine, records: list[UsageRecord], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        await write_batch(engine, records[i : i + batch])
        if (i // batch) % 20 == 0:
            log(f"  {i + batch:>9,} rows, {time.perf_counter() - started:6.1f} s")
    return time.perf_counter() - started


async def timed(runs: int, work: Callable[[], Awaitable[Report]]) -> tuple[list[float], Report]:
    report = await work()  # warm-up: caches, plans
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        report = await work()
        times.append((time.perf_counter() - started) * 1000)
    return times, report


async def raw_totals(engine: AsyncEngine, start: datetime, end: datetime, column: str) -> dict[Any, tuple[int, int]]:
    sql = text(
        f"SELECT {column}, count(*), coalesce(sum(cost_pico), 0) FROM usage_records "
        "WHERE created_at >= :start AND created_at < :end GROUP BY " + column
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(sql, {"start": _bind(engine, start), "end": _bind(engine, end)})).all()
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


def _bind(engine: AsyncEngine, moment: datetime) -> Any:
    # Raw SQL skips the UTCDateTime type: SQLite compares the text it stored, PostgreSQL a timestamptz.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else moment


def reconciles(report: Report, raw: dict[Any, tuple[int, int]]) -> bool:
    mine = {group: (t.requests, t.cost_pico) for group, t in report.groups}
    return mine == raw and report.total.cost_pico == sum(cost for _, cost in raw.values())


async def bench_backend(backend: str, url: str, records: list[UsageRecord], args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        await upgrade_head(engine)
        log(f"{backend}: loading {len(records):,} rows in batches of {args.batch}")
        load_seconds = await load(engine, records, args.batch)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
            raw_rows = (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar()
            rollup_rows = (await conn.execute(text("SELECT count(*) FROM usage_daily"))).scalar()
        log(f"{backend}: loaded in {load_seconds:.1f} s; timing reports")
        results: dict[str, Any] = {
            "backend": backend,
            "load_seconds": load_seconds,
            "raw_rows": raw_rows,
            "rollup_rows": rollup_rows,
        }
        cases = [
            ("per-team monthly (Nov, whole days: rollups)", "team", MONTH, "team"),
            ("per-team, partial days (rollups + raw edges)", "team", PARTIAL, "team"),
            ("per-user monthly (raw rows only)", "user", MONTH, "end_user"),
        ]
        for name, group_by, (start, end), column in cases:
            query = ReportQuery(group_by=group_by, start=start, end=end)
            times, report = await timed(args.runs, lambda q=query: run_report(engine, q))
            raw = await raw_totals(engine, start, end, column)
            results[name] = {
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "max_ms": max(times),
                "groups": len(report.groups),
                "requests": report.total.requests,
                "cost": from_pico(report.total.cost_pico),
                "reconciles": reconciles(report, raw),
            }
            log(f"{backend}: {name}: median {results[name]['median_ms']:.1f} ms, ok={results[name]['reconciles']}")
        return results
    finally:
        await engine.dispose()


async def pg_database(admin_url: str, keep: bool) -> tuple[str, Callable[[], Awaitable[None]]]:
    import asyncpg

    name = "tollgate_bench_" + uuid.uuid4().hex[:8]
    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()

    async def drop() -> None:
        if keep:
            log(f"kept database {name}")
            return
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    return dsn.rsplit("/", 1)[0] + "/" + name, drop


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, generate_seconds: float) -> str:
    lines = [
        f"### Report speed at {args.rows:,} ledger rows (`bench/report_scale.py`, {time.strftime('%Y-%m-%d')})",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; rows over {DAYS} days, "
        f"{len(TEAMS)} teams × 10 keys, {len(MODELS)} models, 10 % unpriced; loaded through the ledger's "
        f"`write_batch` ({args.batch} per transaction, rollups in the same transaction); median of {args.runs} runs "
        "after one warm-up. Target: per-team monthly report under 200 ms.",
        "",
        "| backend | report | median | min | max | groups | requests | reconciles with raw `SUM` |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        for name, value in result.items():
            if isinstance(value, dict):
                lines.append(
                    f"| {result['backend']} | {name} | {value['median_ms']:.1f} ms | {value['min_ms']:.1f} ms | "
                    f"{value['max_ms']:.1f} ms | {value['groups']} | {value['requests']:,} | "
                    f"{'yes' if value['reconciles'] else '**NO**'} (${usd_text(value['cost'])}) |"
                )
    lines += ["", "| backend | raw rows | rollup rows | load time | load rate |", "|---|---:|---:|---:|---:|"]
    for result in results:
        rate = result["raw_rows"] / result["load_seconds"]
        lines.append(
            f"| {result['backend']} | {result['raw_rows']:,} | {result['rollup_rows']:,} | "
            f"{result['load_seconds']:.0f} s | {rate:,.0f} rows/s |"
        )
    lines += ["", f"(Generating the records in Python took {generate_seconds:.0f} s, not counted above.)", ""]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    log(f"generating {args.rows:,} records")
    started = time.perf_counter()
    records = generate(args.rows, args.seed)
    generate_seconds = time.perf_counter() - started
    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as directory:
                url = f"sqlite+aiosqlite:///{Path(directory) / 'tollgate.db'}"
                results.append(await bench_backend("SQLite", url, records, args))
        elif backend == "postgresql":
            url, drop = await pg_database(args.pg_url, args.keep)
            try:
                results.append(await bench_backend("PostgreSQL", url, records, args))
            finally:
                await drop()
        else:
            raise SystemExit(f"unknown backend {backend!r}: sqlite or postgresql")
    print(markdown(results, args, generate_seconds))
    ok = all(v["reconciles"] for r in results for v in r.values() if isinstance(v, dict))
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=5000, help="records per write_batch transaction")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", help="an existing database")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
