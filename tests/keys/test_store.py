from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.database import create_engine
from gateway.keys.store import KEY_PREFIX, KeyCache, KeyStore


def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/t.db"


def database_bytes(directory: Path) -> bytes:
    """The database and any WAL / shared-memory files next to it."""
    files = sorted(directory.glob("t.db*"))
    assert directory / "t.db" in files
    return b"".join(path.read_bytes() for path in files)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    engine = create_engine(db_url(tmp_path))
    key_store = KeyStore(engine)
    await key_store.create_schema()
    yield key_store
    await engine.dispose()


@pytest.fixture
async def other_store(tmp_path: Path, store: KeyStore) -> AsyncIterator[KeyStore]:
    """A second store on its own engine over the same file: another process, as far as the first one knows."""
    engine = create_engine(db_url(tmp_path))
    yield KeyStore(engine)
    await engine.dispose()


async def test_a_created_key_has_the_prefix_and_is_long_and_random(store: KeyStore) -> None:
    first, _ = await store.create("team-a")
    second, _ = await store.create("team-a")

    assert first.startswith(KEY_PREFIX)
    assert first.startswith("tg-")
    # 32 random bytes, URL-safe base64: 43 characters after the prefix.
    assert len(first) >= len(KEY_PREFIX) + 43
    assert first != second
    assert first[len(KEY_PREFIX) :][:16] != second[len(KEY_PREFIX) :][:16]


async def test_a_created_record_describes_the_key(store: KeyStore) -> None:
    before = datetime.now(UTC)
    key, record = await store.create("team-a", name="ci", budget_usd=Decimal("5"))

    assert record.id.startswith("key_")
    assert (record.team, record.name, record.budget_usd) == ("team-a", "ci", Decimal("5"))
    assert record.active
    assert record.revoked_at is None
    assert before - timedelta(seconds=1) <= record.created_at <= datetime.now(UTC)
    # The display prefix lets people tell keys apart, without being the key.
    assert key.startswith(record.display.rstrip("…"))
    assert len(record.display.rstrip("…")) < len(key) // 2


async def test_the_clear_key_is_never_stored_in_the_table(store: KeyStore) -> None:
    key, _ = await store.create("team-a", name="n")

    async with store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM virtual_keys"))).all()

    assert len(rows) == 1
    for value in rows[0]:
        assert key not in str(value)
        assert key[len(KEY_PREFIX) :] not in str(value)


async def test_the_clear_key_is_never_written_to_the_database_files(tmp_path: Path) -> None:
    engine = create_engine(db_url(tmp_path))
    key_store = KeyStore(engine)
    await key_store.create_schema()
    keys = [(await key_store.create(f"team-{i}"))[0] for i in range(3)]
    assert await key_store.find(keys[0]) is not None
    await engine.dispose()

    contents = database_bytes(tmp_path)
    for key in keys:
        assert key.encode() not in contents
        assert key[len(KEY_PREFIX) :].encode() not in contents


async def test_find_returns_the_record_of_the_presented_key(store: KeyStore) -> None:
    key_a, record_a = await store.create("team-a", name="first")
    key_b, record_b = await store.create("team-b", name="second")

    found_a = await store.find(key_a)
    found_b = await store.find(key_b)

    assert found_a is not None
    assert found_b is not None
    assert (found_a.id, found_a.team, found_a.name, found_a.display) == (
        record_a.id,
        "team-a",
        "first",
        record_a.display,
    )
    assert (found_b.id, found_b.team) == (record_b.id, "team-b")


async def test_find_returns_none_for_a_wrong_key(store: KeyStore) -> None:
    key, _ = await store.create("team-a")

    assert await store.find(key + "x") is None
    assert await store.find(key[:-1]) is None
    assert await store.find("tg-" + "A" * 43) is None
    assert await store.find("") is None


async def test_timestamps_round_trip_as_utc_aware_datetimes(store: KeyStore) -> None:
    _, created = await store.create("team-a")
    await store.revoke(created.id)

    stored = await store.get(created.id)

    assert stored is not None
    assert stored.revoked_at is not None
    assert stored.created_at.tzinfo is not None
    assert stored.revoked_at.tzinfo is not None
    assert stored.created_at == created.created_at
    assert stored.revoked_at >= stored.created_at


async def test_a_revoked_key_is_no_longer_found(store: KeyStore) -> None:
    key, record = await store.create("team-a")

    assert await store.revoke(record.id) is True

    assert await store.find(key) is None
    stored = await store.get(record.id)
    assert stored is not None
    assert not stored.active


async def test_revoking_twice_or_an_unknown_id_returns_false(store: KeyStore) -> None:
    _, record = await store.create("team-a")

    assert await store.revoke(record.id) is True
    assert await store.revoke(record.id) is False
    assert await store.revoke("key_does_not_exist") is False


async def test_revoking_one_key_leaves_the_others_working(store: KeyStore) -> None:
    key_a, record_a = await store.create("team-a")
    key_b, _ = await store.create("team-a")

    await store.revoke(record_a.id)

    assert await store.find(key_a) is None
    assert await store.find(key_b) is not None


async def test_list_filters_by_team_and_hides_revoked_keys_unless_asked(store: KeyStore) -> None:
    _, a1 = await store.create("team-a")
    _, a2 = await store.create("team-a")
    _, b1 = await store.create("team-b")
    await store.revoke(a2.id)

    assert {r.id for r in await store.list()} == {a1.id, b1.id}
    assert [r.id for r in await store.list(team="team-a")] == [a1.id]
    assert {r.id for r in await store.list(team="team-a", include_revoked=True)} == {a1.id, a2.id}
    assert {r.id for r in await store.list(include_revoked=True)} == {a1.id, a2.id, b1.id}
    assert await store.list(team="team-c") == []


async def test_budgets_round_trip_as_exact_decimals(store: KeyStore) -> None:
    key, created = await store.create("team-a", budget_usd=Decimal("12.345"))
    _, unlimited = await store.create("team-a")

    found = await store.find(key)
    listed = {r.id: r.budget_usd for r in await store.list()}

    assert found is not None
    assert found.budget_usd == Decimal("12.345")
    assert str(found.budget_usd) == "12.345"
    assert listed == {created.id: Decimal("12.345"), unlimited.id: None}


async def test_the_cache_serves_a_repeated_lookup_without_asking_the_store(
    store: KeyStore, other_store: KeyStore
) -> None:
    key, record = await store.create("team-a")
    cache = KeyCache(store, ttl=60)
    assert (await cache.authenticate(key)) is not None

    # Revoked behind the cache's back, as the CLI or another replica would.
    assert await other_store.revoke(record.id)
    assert await store.find(key) is None

    cached = await cache.authenticate(key)
    assert cached is not None
    assert cached.id == record.id


async def test_the_cache_rereads_a_key_once_forgotten(store: KeyStore, other_store: KeyStore) -> None:
    key, record = await store.create("team-a")
    cache = KeyCache(store, ttl=60)
    await cache.authenticate(key)
    await other_store.revoke(record.id)

    cache.forget(record.id)

    assert await cache.authenticate(key) is None


async def test_the_cache_rereads_a_key_after_its_ttl(store: KeyStore, other_store: KeyStore) -> None:
    key, record = await store.create("team-a")
    cache = KeyCache(store, ttl=0.2)
    await cache.authenticate(key)
    await other_store.revoke(record.id)
    assert await cache.authenticate(key) is not None

    await asyncio.sleep(0.25)

    assert await cache.authenticate(key) is None


async def test_a_cache_with_zero_ttl_sees_a_revocation_at_once(store: KeyStore, other_store: KeyStore) -> None:
    key, record = await store.create("team-a")
    cache = KeyCache(store, ttl=0)
    assert await cache.authenticate(key) is not None

    await other_store.revoke(record.id)

    assert await cache.authenticate(key) is None


async def test_the_cache_rejects_an_unknown_key(store: KeyStore) -> None:
    cache = KeyCache(store, ttl=60)

    assert await cache.authenticate("tg-unknown") is None
    assert await cache.authenticate("tg-unknown") is None


async def test_forgetting_one_key_keeps_the_others_cached(store: KeyStore, other_store: KeyStore) -> None:
    key_a, record_a = await store.create("team-a")
    key_b, record_b = await store.create("team-b")
    cache = KeyCache(store, ttl=60)
    await cache.authenticate(key_a)
    await cache.authenticate(key_b)
    await other_store.revoke(record_a.id)
    await other_store.revoke(record_b.id)

    cache.forget(record_a.id)

    assert await cache.authenticate(key_a) is None
    assert await cache.authenticate(key_b) is not None


async def test_an_unseen_key_while_the_store_is_down_is_a_503_not_a_500() -> None:
    from gateway.database import create_engine as make_engine
    from gateway.exceptions import ServiceUnavailable
    from gateway.keys.store import KeyCache, KeyStore
    from support.threads import free_port

    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await KeyCache(KeyStore(engine), ttl=10).authenticate("tg-never-seen")
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"] == "5"
    finally:
        await engine.dispose()
