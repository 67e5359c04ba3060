"""Alembic environment: runs on the connection `upgrade_head` passes in, or on `-x url=...` from the command line."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from gateway.database import create_engine


def run(connection: Connection) -> None:
    # One transaction for the whole upgrade where the backend allows it (PostgreSQL): all or nothing.
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database URL: alembic -c gateway/migrations/alembic.ini -x url=... upgrade head")
    asyncio.run(run_from_url(url))
