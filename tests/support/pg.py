"""Throwaway databases for tests that run against both SQL backends: a SQLite file, or a fresh PostgreSQL database
on the machine's server (127.0.0.1:5432, trust auth) created for one test and dropped after it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_MAINTENANCE_DB = "test"
BACKENDS = ("sqlite", "postgresql")


def pg_url(database: str, port: int = PG_PORT) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{port}/{database}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_MAINTENANCE_DB)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is needed at {PG_HOST}:{PG_PORT} (user {PG_USER}, database test): {exc}")


async def create_database() -> str:
    name = "tollgate_test_" + uuid.uuid4().hex[:12]
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A new, empty database; yields its URL and drops it (closing stray connections) afterwards."""
    name = await create_database()
    try:
        yield pg_url(name)
    finally:
        await drop_database(name)


@contextmanager
def database_url_sync(backend: str, directory: Path) -> Iterator[str]:
    """`database_url` for synchronous (e.g. module-scoped) fixtures."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'tollgate.db'}"
        return
    name = asyncio.run(create_database())
    try:
        yield pg_url(name)
    finally:
        asyncio.run(drop_database(name))


@asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tollgate.db'}"
    else:
        async with pg_database() as url:
            yield url


class TcpProxy:
    """A TCP relay to PostgreSQL on a port of its own, run on the test's event loop, that a test can cut (every
    connection aborted, new ones refused) and restore: a database outage without touching the real server."""

    def __init__(self, target_port: int = PG_PORT, target_host: str = PG_HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def url(self, database: str) -> str:
        return pg_url(database, port=self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, PG_HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def stall(self) -> None:
        """The database hangs: connections stay open (and new ones are accepted) but no byte goes through."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._transports.add(client_writer.transport)
        await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._transports.update({client_writer.transport, upstream_writer.transport})
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._transports.discard(writer.transport)
            writer.transport.abort()
