"""Alembic migrations for every table Tollgate keeps (keys, ledger, rollups), on SQLite and PostgreSQL.

The gateway and the CLI call `upgrade_head(engine)` at start. It costs one `SELECT` when the schema is current,
which is the common case, and imports Alembic only when there is something to do. Two processes starting at once
are serialised: on PostgreSQL by a transaction-scoped advisory lock (taken in the same transaction that runs the
migrations, whose DDL is transactional there), on SQLite by an `flock` on a file next to the database (SQLite DDL
through Alembic is not transactional, and only processes on the same machine can share the file anyway). The
second process then finds the schema at head and does nothing.

A new revision: `.venv/bin/alembic -c gateway/migrations/alembic.ini -x url=sqlite:///data/tollgate.db revision
-m "what"`, then set `HEAD` below to its id (a test checks they agree).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

HEAD = "0001"
MIGRATIONS_DIR = Path(__file__).parent
# Any constant works as long as nothing else in the database uses it for pg_advisory_lock: "tollgate" in ASCII.
_PG_LOCK_ID = 0x746F6C6C67617465


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except DBAPIError:
        # No alembic_version table yet (or no database at all: `upgrade_head` will then raise the real error).
        return None


async def upgrade_head(engine: AsyncEngine) -> None:
    """Brings the schema to the latest revision; safe to call from several processes at once."""
    if await current_revision(engine) == HEAD:
        return
    lock_path = _sqlite_lock_path(engine)
    if lock_path is None:
        await _upgrade(engine)
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        await _upgrade(engine)
    finally:
        os.close(fd)  # closing releases the lock


def _sqlite_lock_path(engine: AsyncEngine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + ".migrate-lock")


async def _upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        await conn.run_sync(_run_alembic)


def _run_alembic(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
