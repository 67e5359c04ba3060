"""Alembic migrations: from empty on both backends, concurrently from two processes, and over a pre-migration store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.database import create_engine
from gateway.keys.store import KeyStore
from gateway.keys.store import metadata as keys_metadata
from gateway.migrations import HEAD, MIGRATIONS_DIR, current_revision, upgrade_head
from support.pg import BACKENDS, database_url

TABLES = {"alembic_version", "virtual_keys", "usage_records", "usage_daily"}


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def index_names(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes(table))
    return {index["name"] for index in indexes if index["name"]}


def test_head_constant_is_the_latest_revision() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


@pytest.mark.parametrize("backend", BACKENDS)
async def test_upgrade_from_empty_creates_every_table_and_keys_work(backend: str, tmp_path: Path) -> None:
    async with database_url(backend, tmp_path) as url:
        engine = create_engine(url)
        assert await current_revision(engine) is None

        await upgrade_head(engine)
        await upgrade_head(engine)  # at head: a no-op

        assert await current_revision(engine) == HEAD
        assert await table_names(engine) >= TABLES
        assert {"ix_usage_records_created_at", "ix_usage_records_team_created_at"} <= await index_names(
            engine, "usage_records"
        )
        assert "ix_usage_daily_team_day" in await index_names(engine, "usage_daily")
        store = KeyStore(engine)
        key, record = await store.create("team-a", name="ci")
        assert await store.find(key) == record
        await engine.dispose()


UPGRADE = """
import asyncio, sys
from gateway.database import create_engine
from gateway.migrations import upgrade_head

async def main() -> None:
    engine = create_engine(sys.argv[1])
    await upgrade_head(engine)
    await engine.dispose()

asyncio.run(main())
"""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_processes_upgrading_at_once_both_succeed(backend: str, tmp_path: Path) -> None:
    async with database_url(backend, tmp_path) as url:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", UPGRADE, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        results = [await process.communicate() for process in processes]
        for process, (_, stderr) in zip(processes, results, strict=True):
            assert process.returncode == 0, stderr.decode()[-3000:]
        engine = create_engine(url)
        assert await current_revision(engine) == HEAD
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar() == 1
        await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_store_made_before_migrations_keeps_its_keys(backend: str, tmp_path: Path) -> None:
    async with database_url(backend, tmp_path) as url:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(keys_metadata.create_all)  # how KeyStore made its table before migrations
        store = KeyStore(engine)
        key, record = await store.create("team-a")

        await store.create_schema()

        assert await current_revision(engine) == HEAD
        assert await table_names(engine) >= TABLES
        assert await store.find(key) == record
        await engine.dispose()
