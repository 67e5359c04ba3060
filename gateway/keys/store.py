"""Virtual keys in SQL. Only a SHA-256 digest of each key is stored; the key itself is shown once, at creation.

Keys carry 256 bits from `secrets`, so a plain digest is enough: there is nothing to brute-force, and a fast digest
keeps the per-request check in microseconds. The digest found by the index lookup is compared again with
`hmac.compare_digest`, so the final comparison takes the same time whatever the input.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, MetaData, Row, String, Table, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.database import UTCDateTime
from gateway.exceptions import ServiceUnavailable
from gateway.migrations import upgrade_head

KEY_PREFIX = "tg-"

# Describes the table for queries; it is created by the migrations in gateway/migrations/.
metadata = MetaData()

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    # The first characters of the key, so people can tell their keys apart in listings.
    Column("display", String(16), nullable=False),
    Column("team", String(200), nullable=False, index=True),
    Column("name", String(200), nullable=True),
    # Decimal as text: exact on every backend (SQLite has no decimal type).
    Column("budget_usd", String(40), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    id: str
    team: str
    display: str
    name: str | None
    budget_usd: Decimal | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _row_to_key(row: Row[Any]) -> VirtualKey:
    budget = row.budget_usd
    return VirtualKey(
        id=row.id,
        team=row.team,
        display=row.display,
        name=row.name,
        budget_usd=Decimal(budget) if budget is not None else None,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_schema(self) -> None:
        """Brings every table (keys, ledger) to the latest Alembic revision; one SELECT when already there."""
        await upgrade_head(self.engine)

    async def create(
        self, team: str, *, name: str | None = None, budget_usd: Decimal | None = None
    ) -> tuple[str, VirtualKey]:
        """Returns the key in clear (the only time it exists outside the client) and its record."""
        key = new_key()
        record = VirtualKey(
            id="key_" + uuid.uuid4().hex[:16],
            team=team,
            display=key[:10] + "…",
            name=name,
            budget_usd=budget_usd,
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                virtual_keys.insert().values(
                    id=record.id,
                    key_hash=digest(key),
                    display=record.display,
                    team=team,
                    name=name,
                    budget_usd=str(budget_usd) if budget_usd is not None else None,
                    created_at=record.created_at,
                )
            )
        return key, record

    async def find(self, key: str) -> VirtualKey | None:
        """The active record for a presented key, or None."""
        wanted = digest(key)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(virtual_keys).where(virtual_keys.c.key_hash == wanted))).first()
        if row is None or not hmac.compare_digest(row.key_hash, wanted):
            return None
        record = _row_to_key(row)
        return record if record.active else None

    async def get(self, key_id: str) -> VirtualKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(virtual_keys).where(virtual_keys.c.id == key_id))).first()
        return _row_to_key(row) if row is not None else None

    async def list(self, team: str | None = None, include_revoked: bool = False) -> list[VirtualKey]:
        query = select(virtual_keys).order_by(virtual_keys.c.created_at)
        if team is not None:
            query = query.where(virtual_keys.c.team == team)
        if not include_revoked:
            query = query.where(virtual_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_row_to_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revokes a key by id; False if there is no active key with that id."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(virtual_keys)
                .where(virtual_keys.c.id == key_id, virtual_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(result.rowcount)


class KeyCache:
    """Remembers recent lookups so a request costs a digest and a dict lookup, not a query.

    A key revoked through this process is dropped at once; one revoked elsewhere (the CLI, another replica) stops
    working within `ttl` seconds. Unknown keys are remembered briefly too, so a flood of bad keys can't turn into
    a flood of queries.
    """

    def __init__(self, store: KeyStore, ttl: float, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.negative_ttl = min(ttl, 2.0)
        self.max_entries = max_entries
        self.lookup_timeout = 2.0
        self._entries: dict[str, tuple[VirtualKey | None, float]] = {}

    async def authenticate(self, key: str) -> VirtualKey | None:
        wanted = digest(key)
        now = time.monotonic()
        cached = self._entries.get(wanted)
        if cached is not None:
            record, expires = cached
            if now < expires:
                return record
        try:
            async with asyncio.timeout(self.lookup_timeout):
                record = await self.store.find(key)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # The store is down (DESIGN.md §3: that must not fail requests). A key seen before keeps working on
            # its last known state until the store answers again; one never seen cannot be checked.
            if cached is not None:
                self._entries[wanted] = (cached[0], now + min(self.ttl, 5.0))
                return cached[0]
            raise ServiceUnavailable(
                "The key store is unavailable and this key has not been seen recently; retry shortly.",
                code="key_store_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[wanted] = (record, now + (self.ttl if record is not None else self.negative_ttl))
        return record

    def forget(self, key_id: str) -> None:
        for key_hash, (record, _) in list(self._entries.items()):
            if record is not None and record.id == key_id:
                del self._entries[key_hash]
