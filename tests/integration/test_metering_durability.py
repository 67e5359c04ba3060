"""The durability contract (DESIGN.md §3) on a real `tollgate serve` process under concurrent load:

- `kill -9` mid-load, restart on the same data directory: after the journal replay, every response a client received
  in full has exactly one usage record, and nothing is counted twice.
- PostgreSQL cut mid-load (a TCP proxy between gateway and server): requests keep succeeding, /readyz says
  degraded (still 200) while the journal grows, and once the database is back the records catch up; a process
  killed during the outage leaves its journal to the next one, which replays it once the database is back.

A response is "received in full" when its JSON parsed or its stream ended with `data: [DONE]`; it is matched with
its record by the `x-request-id` header.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.gateway import GatewayProcess, gateway_process
from support.load import Load, Outcome
from support.metering import StoredRecord, store_records
from support.pg import TcpProxy, create_database, drop_database, pg_url
from support.threads import LoopThread

POLICY = """
models:
  - alias: "mock/*"
    deployments: [{provider: mock}]
"""
PROMPT = [{"role": "user", "content": "one two three four five six"}]
# JSON and streamed calls; mock/slow streams for 0.3 s, so some are always in flight when the process dies.
BODIES: list[dict[str, Any]] = [
    {"model": "mock/echo", "messages": PROMPT},
    {"model": "mock/echo", "messages": PROMPT, "stream": True},
    {"model": "mock/echo", "messages": PROMPT, "user": "u1"},
    {"model": "mock/slow", "messages": PROMPT, "stream": True},
]
# Records reach the database as batches of 64 fill up (a remainder would wait a minute): the kill finds records in the
# database and in the journal both, and records in the journal alone.
BATCHING = {"TOLLGATE_LEDGER_BATCH_SIZE": "64", "TOLLGATE_LEDGER_FLUSH_SECONDS": "60"}


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def readiness(process: GatewayProcess) -> dict[str, Any]:
    response = httpx.get(process.gateway.url + "/readyz", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_until_caught_up(process: GatewayProcess, timeout: float = 30) -> dict[str, Any]:
    """Until the ledger has written everything it journaled or claimed from a dead process (lag 0, healthy)."""
    deadline = time.monotonic() + timeout
    while True:
        body = readiness(process)
        ledger = body["checks"]["ledger"]
        if ledger["lag"] == 0 and ledger["healthy"] and body["status"] == "ready":
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"ledger not caught up after {timeout}s: {body}\n{process.log()[-3000:]}")
        time.sleep(0.05)


def assert_one_record_per_received_response(
    outcomes: list[Outcome], records: list[StoredRecord], rollup_requests: int
) -> None:
    received = [o.request_id for o in outcomes if o.complete]
    assert received and None not in received
    ids = Counter(r.request_id for r in records)
    assert not [i for i, n in ids.items() if n > 1], "duplicate raw records"
    assert rollup_requests == len(records), "the daily rollups count some record twice (or miss one)"
    missing = [i for i in received if i not in ids]
    assert not missing, f"{len(missing)} of {len(received)} received responses have no record, e.g. {missing[:3]}"
    # Nothing else: a record exists only for a request that was made (some never got a response to the client).
    assert len(records) <= len(outcomes)
    assert all(r.status == "ok" for r in records if r.request_id in set(received))


def test_kill_9_under_load_loses_no_record_of_a_received_response_and_duplicates_none(
    policy_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = f"sqlite+aiosqlite:///{data / 'tollgate.db'}"
    with gateway_process(policy_path, data, env=BATCHING) as first:
        key = first.gateway.create_key("durable")
        with Load(first.gateway.base_url, key, BODIES, workers=8, max_requests=3000, stop_on_error=True) as load:
            load.wait_for_complete(240)
            os.kill(first.process.pid, 9)
            first.process.wait(10)
        outcomes = load.snapshot()
    assert first.process.returncode == -9
    # Some responses were cut off by the kill; many had been received in full.
    assert sum(o.complete for o in outcomes) >= 240
    before, _ = store_records(store)
    journaled = journaled_ids(data / "journal")
    # Batches had reached the database (and stay in the journal until their segment is done with): the replay
    # meets them again, and must not count them twice.
    assert len(before) >= 64 and {r.request_id for r in before} <= journaled

    with gateway_process(policy_path, data) as second:
        wait_until_caught_up(second)
        records, rollup_requests = store_records(store)
        # The replayed segments are gone; only the new process's own segment is left.
        left = [p.name for p in (data / "journal").glob("usage-*.jsonl")]
        assert all(f"-{second.process.pid}-" in name for name in left), left

    assert_one_record_per_received_response(outcomes, records, rollup_requests)
    # Exactly what the dead process journaled: nothing lost, nothing made up.
    assert {r.request_id for r in records} == journaled


def journaled_ids(directory: Path) -> set[str]:
    """The request ids in a journal directory's segments (every line whole: a kill does not tear a small write)."""
    ids: list[str] = []
    for segment in directory.glob("usage-*.jsonl"):
        ids += [orjson.loads(line)["request_id"] for line in segment.read_bytes().splitlines()]
    assert len(ids) == len(set(ids))
    return set(ids)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def database() -> Iterator[str]:
    name = asyncio.run(create_database())
    try:
        yield name
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture
def db_proxy(loop: LoopThread) -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    loop.run(proxy.start())
    try:
        yield proxy
    finally:
        loop.run(proxy.cut())


# A short key cache, so the outages below outlast it: known keys must keep working from their last known state.
PG_ENV = {"TOLLGATE_KEY_CACHE_SECONDS": "1", "TOLLGATE_LEDGER_FLUSH_SECONDS": "0.1"}


def test_postgresql_outage_under_load_keeps_serving_and_the_records_catch_up(
    policy_path: Path, tmp_path: Path, loop: LoopThread, db_proxy: TcpProxy, database: str
) -> None:
    env = {**PG_ENV, "DATABASE_URL": db_proxy.url(database)}
    with gateway_process(policy_path, tmp_path, env=env) as gateway:
        key = gateway.gateway.create_key("outage")
        with Load(gateway.gateway.base_url, key, BODIES, workers=8, max_requests=4000, pause=0.005) as load:
            load.wait_for_complete(80)
            loop.run(db_proxy.cut())
            cut_at = len(load.snapshot())
            load.wait_for_complete(150)
            first = readiness(gateway)
            load.wait_for_complete(150)
            second = readiness(gateway)
            loop.run(db_proxy.start())
            restored_at = len(load.snapshot())
            load.wait_for_complete(80)
        outcomes = load.snapshot()
        wait_until_caught_up(gateway)

    assert [o for o in outcomes if not o.complete] == []  # every request succeeded, through the outage too
    assert restored_at - cut_at >= 300
    for body in (first, second):
        assert body["status"] == "degraded"
        assert body["checks"]["database"].startswith("unavailable")
        assert body["checks"]["ledger"]["healthy"] is False
    assert 0 < first["checks"]["ledger"]["lag"] < second["checks"]["ledger"]["lag"]  # the journal grows
    records, rollup_requests = store_records(pg_url(database))  # straight to the server, not through the proxy
    assert_one_record_per_received_response(outcomes, records, rollup_requests)
    assert len(records) == len(outcomes)


def test_kill_9_during_a_postgresql_outage_replays_the_journal_once_the_database_is_back(
    policy_path: Path, tmp_path: Path, loop: LoopThread, db_proxy: TcpProxy, database: str
) -> None:
    env = {**PG_ENV, "DATABASE_URL": db_proxy.url(database)}
    with gateway_process(policy_path, tmp_path, env=env) as first:
        key = first.gateway.create_key("outage-kill")
        with Load(first.gateway.base_url, key, BODIES, workers=8, max_requests=3000, stop_on_error=True) as load:
            load.wait_for_complete(60)
            loop.run(db_proxy.cut())
            load.wait_for_complete(200)
            os.kill(first.process.pid, 9)
            first.process.wait(10)
        outcomes = load.snapshot()
    before, _ = store_records(pg_url(database))
    assert len(before) < sum(o.complete for o in outcomes)

    loop.run(db_proxy.start())
    with gateway_process(policy_path, tmp_path, env=env) as second:
        wait_until_caught_up(second)
        records, rollup_requests = store_records(pg_url(database))

    assert_one_record_per_received_response(outcomes, records, rollup_requests)


def test_a_database_outage_longer_than_the_key_cache_still_serves_known_keys(
    policy_path: Path, tmp_path: Path, loop: LoopThread, db_proxy: TcpProxy, database: str
) -> None:
    env = {"DATABASE_URL": db_proxy.url(database), "TOLLGATE_KEY_CACHE_SECONDS": "0.5"}
    with gateway_process(policy_path, tmp_path, env=env) as gateway:
        key = gateway.gateway.create_key("outage-keys")
        headers = {"Authorization": f"Bearer {key}"}
        url = gateway.gateway.base_url + "/chat/completions"
        assert httpx.post(url, json=BODIES[0], headers=headers).status_code == 200
        loop.run(db_proxy.cut())
        time.sleep(1.0)  # the key's cache entry has expired; the store cannot be asked
        response = httpx.post(url, json=BODIES[0], headers=headers, timeout=15)
        loop.run(db_proxy.start())
    assert response.status_code == 200, response.text
