"""The journal on its own: segment files, locks, torn lines; and a writer killed with SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.accounting.journal import Journal, Segment
from gateway.accounting.ledger import Ledger
from gateway.accounting.records import UsageRecord
from gateway.database import create_engine
from gateway.migrations import upgrade_head
from gateway.settings import Settings
from support.pg import BACKENDS, database_url, pg_url
from support.threads import free_port
from support.usage_records import eventually, usage


def lines(*records: UsageRecord) -> bytes:
    return b"".join(r.to_json() + b"\n" for r in records)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("usage-*.jsonl"))


def test_append_writes_one_json_line_per_record_that_reads_back_equal(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    records = [usage(i, tags={"project": "x"}, user="u1") for i in range(3)]
    for record in records:
        journal.append(record.to_json() + b"\n")

    (path,) = segment_files(tmp_path)
    assert path.read_bytes() == lines(*records)
    assert str(os.getpid()) in path.name
    assert journal.active is not None and journal.active.appended == 3
    chunk = Journal.read_chunk(journal.active)
    assert chunk.records == records and chunk.at_end and chunk.bad_lines == 0
    journal.close()


def test_a_live_segment_is_never_claimed_by_another_journal(tmp_path: Path) -> None:
    live = Journal(tmp_path)
    live.open()
    live.append(lines(usage(1)))
    other = Journal(tmp_path)
    other.open()

    # flock locks belong to open file descriptions: a second open of the file conflicts even in one process.
    assert other.claim_orphans() == []

    live.release(live.segments[0])  # as the kernel does when the process dies
    (claimed,) = other.claim_orphans()
    assert claimed.appended == 1 and not claimed.owned
    assert Journal.read_chunk(claimed).records == [usage(1)]
    other.discard(claimed)
    assert segment_files(tmp_path) == [other.segments[0].path]
    other.close()
    live.close()


def test_a_torn_last_line_is_skipped_and_a_whole_one_without_newline_is_kept(tmp_path: Path) -> None:
    torn = tmp_path / "usage-1-1-000001.jsonl"
    torn.write_bytes(lines(usage(1), usage(2)) + usage(3).to_json()[:40])
    whole = tmp_path / "usage-1-1-000002.jsonl"
    whole.write_bytes(lines(usage(4)) + usage(5).to_json())
    journal = Journal(tmp_path)

    first, second = journal.claim_orphans()

    chunk = Journal.read_chunk(first)
    assert [r.request_id for r in chunk.records] == ["req_00000001", "req_00000002"]
    assert chunk.bad_lines == 1 and chunk.at_end
    assert first.appended == 3  # the torn line counts as journaled until replayed
    assert [r.request_id for r in Journal.read_chunk(second).records] == ["req_00000004", "req_00000005"]
    for segment in (first, second):
        journal.discard(segment)
    assert segment_files(tmp_path) == []


def test_reading_in_small_blocks_resumes_at_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "usage-1-1-000001.jsonl"
    records = [usage(i) for i in range(50)]
    path.write_bytes(lines(*records))
    journal = Journal(tmp_path)
    (segment,) = journal.claim_orphans()

    seen: list[UsageRecord] = []
    while True:
        chunk = Journal.read_chunk(segment, block=700)  # a few lines per read, often cutting one in half
        seen.extend(chunk.records)
        segment.replay_offset = chunk.next_offset
        if chunk.at_end:
            break
    assert seen == records
    journal.release(segment)


def test_a_segment_gets_its_name_only_once_locked_and_leftover_temporaries_are_cleaned(tmp_path: Path) -> None:
    abandoned = tmp_path / ".usage-1-1-000001.jsonl.tmp"
    abandoned.write_bytes(b"")
    journal = Journal(tmp_path)
    journal.open()
    assert not abandoned.exists()
    assert [p.name for p in tmp_path.iterdir()] == [journal.segments[0].path.name]
    journal.close()
    assert list(tmp_path.iterdir()) == []  # an empty segment is deleted on close


def test_rotation_seals_the_active_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    first = journal.append(lines(usage(1)))
    second = journal.rotate()
    assert first.sealed and not second.sealed and journal.active is second
    assert journal.append(lines(usage(2))) is second
    assert len(segment_files(tmp_path)) == 2
    journal.close()
    assert len(segment_files(tmp_path)) == 2  # nothing committed: both stay for replay


def test_segment_pending_counts_uncommitted_records(tmp_path: Path) -> None:
    segment = Segment(path=tmp_path / "x", fd=-1, owned=True, appended=5, committed=3)
    assert segment.pending == 2


# -- kill -9 -------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal
    from pathlib import Path

    from gateway.accounting.ledger import Ledger
    from gateway.accounting.records import UsageRecord
    from gateway.database import create_engine
    from gateway.settings import Settings

    async def main(data_dir: str, url: str) -> None:
        settings = Settings(data_dir=Path(data_dir), ledger_batch_size=50, ledger_flush_seconds=0.005)
        ledger = Ledger(settings, create_engine(url), queue_size=400)
        await ledger.start()
        t0 = datetime(2026, 11, 2, tzinfo=UTC)
        i = 0
        while True:
            ledger.record(UsageRecord(
                request_id=f"req_{i:08d}", created_at=t0 + timedelta(seconds=i), team=f"team-{i % 3}",
                key_id="key_a", alias="gpt-test", provider="openai", upstream_model="gpt-4o-mini",
                deployment="openai", endpoint="chat/completions", status="ok", http_status=200,
                input_tokens=10, output_tokens=5, cost_usd=Decimal("0.000001"),
            ))
            # Printed only once record() has returned: the parent treats these as acknowledged responses.
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
            i += 1
            if i % 25 == 0:
                await asyncio.sleep(0)  # let the writer commit some batches, as a busy gateway would

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_records_acknowledged_before_a_kill_9_are_all_in_the_database_exactly_once(
    backend: str, tmp_path: Path
) -> None:
    async with database_url(backend, tmp_path) as url:
        engine = create_engine(url)
        await upgrade_head(engine)
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(tmp_path), url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None
        acknowledged: list[int] = []
        try:
            async with asyncio.timeout(60):
                while len(acknowledged) < 3000:
                    line = await process.stdout.readline()
                    if not line:
                        break
                    acknowledged.append(int(line))
        finally:
            process.send_signal(signal.SIGKILL)
            rest, stderr = await process.communicate()
        acknowledged.extend(int(line) for line in rest.split())
        assert len(acknowledged) >= 3000, stderr.decode()[-2000:]
        assert segment_files(tmp_path / "journal"), "the killed writer left its journal behind"

        settings = Settings(data_dir=tmp_path, ledger_batch_size=200, ledger_flush_seconds=0.01)
        ledger = Ledger(settings, engine)
        await ledger.start()
        async with asyncio.timeout(60):
            await ledger.flush()
        await ledger.stop()

        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT request_id FROM usage_records"))).scalars().all()
            rollup = (await conn.execute(text("SELECT sum(requests) FROM usage_daily"))).scalar()
        await engine.dispose()
        stored = {int(i.removeprefix("req_")) for i in ids}
        assert len(ids) == len(stored)
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
        # At most the record being written at the kill, whose record() never returned, may be there too.
        assert stored <= set(range(max(acknowledged) + 2))
        assert int(rollup) == len(ids)
        assert segment_files(tmp_path / "journal") == []
        assert ledger.stats.replayed_segments >= 1


async def test_a_second_ledger_replays_a_segment_only_after_its_owner_is_gone(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tollgate.db'}"
    engine = create_engine(url)
    await upgrade_head(engine)
    # The owner's database is unreachable (nothing listens on that port), so its records stay in its segment.
    dead_db = create_engine(pg_url("unreachable", port=free_port()))
    settings = Settings(data_dir=tmp_path, ledger_batch_size=10, ledger_flush_seconds=0.01)
    owner = Ledger(settings, dead_db, max_backoff=0.05, shutdown_timeout=0.1)
    await owner.start()
    for i in range(5):
        owner.record(usage(i))
    other = Ledger(settings, engine, maintenance_seconds=0.05)
    await other.start()
    try:
        await asyncio.sleep(0.3)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar() == 0
        assert owner.lag == 5 and not owner.healthy
        owner_segment = owner.journal.segments[0].path
        assert owner_segment.exists()

        await owner.stop()  # gives up its segment; the other ledger's periodic scan takes it over
        await eventually(lambda: not owner_segment.exists())
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar() == 5
    finally:
        await other.stop()
        await dead_db.dispose()
        await engine.dispose()
