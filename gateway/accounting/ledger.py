"""The ledger: every usage record, journaled on the request path and batched into SQL off it (DESIGN.md §3).

    ledger.record(rec)       # sync, on the event loop: one os.write() to the journal + an append to a bounded queue
        │
        ▼  background task, every `ledger_flush_seconds` or `ledger_batch_size` records
    write_batch()            # one transaction: INSERT raw rows ON CONFLICT (request_id) DO NOTHING RETURNING the
                             # ids actually inserted, then add exactly those rows to the daily rollups

A record is acknowledged (and its journal segment eventually deleted) only after its transaction commits. When
the database is away the task retries with capped exponential backoff while the journal keeps growing; records
that find the queue full stay in the journal alone, and the task replays them from the file once it catches up.
At start the ledger claims the segments of dead processes and replays them. Because inserts are idempotent by
request id and rollups count only the rows an insert really added, replaying a record twice changes nothing.

`lag` (records journaled but not yet in the database) and `healthy` are meant for /readyz and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import reports
from gateway.accounting.journal import Journal, Segment
from gateway.accounting.ledger_store import delete_raw_before, write_batch
from gateway.accounting.records import UsageRecord
from gateway.accounting.schema import is_exact_in_pico
from gateway.settings import Settings

logger = logging.getLogger("tollgate.ledger")


@dataclass
class LedgerStats:
    recorded: int = 0  # record() calls
    written: int = 0  # rows inserted
    duplicates: int = 0  # records already in the database (replays)
    overflowed: int = 0  # records that found the queue full and were left to the journal replay
    journal_errors: int = 0  # records the journal could not take (kept in memory only)
    lost: int = 0  # records neither journaled nor queued
    rejected: int = 0  # records the database refused on their own while reachable (set aside, see `_reject`)
    db_errors: int = 0  # failed database attempts
    bad_journal_lines: int = 0  # unreadable lines skipped in replayed segments
    rounded_costs: int = 0  # costs finer than a picodollar
    replayed_segments: int = 0
    deleted_raw_rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)


Pending = tuple[UsageRecord, Segment | None]
MAINTENANCE_TIMEOUT = 600.0


class Ledger:
    """Owns the journal and the background writer. `record()` is the only call on the request path."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        *,
        queue_size: int | None = None,
        max_backoff: float = 30.0,
        write_timeout: float = 30.0,
        shutdown_timeout: float = 5.0,
        segment_bytes: int = 64 * 1024 * 1024,
        segment_seconds: float = 600.0,
        maintenance_seconds: float = 60.0,
        retention_seconds: float = 3600.0,
    ) -> None:
        self.engine = engine
        self.journal = Journal(settings.journal_dir)
        self.batch_size = settings.ledger_batch_size
        self.flush_seconds = settings.ledger_flush_seconds
        self.retention_days = settings.ledger_retention_days
        self.queue_size = queue_size if queue_size is not None else max(10_000, 20 * self.batch_size)
        self.max_backoff = max_backoff
        self.write_timeout = write_timeout
        self.shutdown_timeout = shutdown_timeout
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.maintenance_seconds = maintenance_seconds
        self.retention_seconds = retention_seconds
        self.stats = LedgerStats()
        self.last_error: str | None = None
        self._db_ok = True
        self._journal_ok = True
        self._queue: deque[Pending] = deque()
        self._inflight: list[Pending] = []
        self._unjournaled = 0  # queued records whose journal write failed
        self._orphans: list[Segment] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_maintenance = 0.0
        self._next_retention = 0.0

    # -- the request path --------------------------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        """Journals the record and queues it for the database. Never blocks, never raises for a full queue or an
        unwritable journal (both are counted). Call it from the event loop's thread."""
        self.stats.recorded += 1
        if record.cost_usd is not None and not is_exact_in_pico(record.cost_usd):
            self.stats.rounded_costs += 1
        segment: Segment | None = None
        try:
            segment = self.journal.append(record.to_json() + b"\n")
            self._journal_ok = True
        except OSError as exc:
            # The response goes out anyway (DESIGN.md §3: storage trouble never fails a request); say it loudly.
            self.stats.journal_errors += 1
            self._journal_ok = False
            self.last_error = f"journal: {exc}"
            logger.error("journal append failed, record %s kept in memory only: %s", record.request_id, exc)
        if len(self._queue) >= self.queue_size:
            if segment is None:
                self.stats.lost += 1
                logger.error("record %s lost: the journal failed and the queue is full", record.request_id)
                return
            segment.overflowed += 1
            self.stats.overflowed += 1
            return
        self._queue.append((record, segment))
        if segment is None:
            self._unjournaled += 1
        if len(self._queue) >= self.batch_size or not self.flush_seconds:
            self._wake.set()

    @property
    def lag(self) -> int:
        """Records journaled (or queued) but not yet confirmed in the database, as this process sees them."""
        own = sum(segment.pending for segment in self.journal.segments)
        return own + sum(segment.pending for segment in self._orphans) + self._unjournaled

    @property
    def healthy(self) -> bool:
        """False while database writes fail or the journal cannot be written; the gateway keeps serving."""
        return self._db_ok and self._journal_ok

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._inflight)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the ledger runs on: other threads hand records over with `loop.call_soon_threadsafe`."""
        if self._loop is None:
            raise RuntimeError("the ledger has not been started")
        return self._loop

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the journal and starts the writer. Dead processes' segments are replayed in the background, so a
        database that is down at this moment does not keep the gateway from starting."""
        self.journal.open()
        self._orphans.extend(self.journal.claim_orphans())
        now = time.monotonic()
        self._next_maintenance = now + self.maintenance_seconds
        self._next_retention = now
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        """Writes what it can within `shutdown_timeout`; whatever is left stays in the journal for the next start."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.shutdown_timeout + self.write_timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        for orphan in self._orphans:
            self.journal.release(orphan)
        self._orphans.clear()
        self.journal.close()

    async def flush(self) -> None:
        """Waits until everything journaled so far is in the database (tests, and callers of `spend_since`). While
        the database is away this waits for it: bound it with `asyncio.timeout()`."""
        while self.lag > 0:
            if self._task is None:
                raise RuntimeError(f"the ledger is not running and is {self.lag} records behind")
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()

    # -- the writer --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        deadline: float | None = None
        while True:
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self.shutdown_timeout
            if not self._stopping and not self._has_work():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_timeout())
            self._wake.clear()
            try:
                did_work = await asyncio.wait_for(self._step(), self.write_timeout)
                if not self._stopping:
                    # Outside the write's time limit: retention may delete many days, one transaction each.
                    await asyncio.wait_for(self._maintain(), max(self.write_timeout, MAINTENANCE_TIMEOUT))
            except Exception as exc:  # The worker loop: any driver, network or timeout error means "retry later".
                self._note_failure(exc)
                self._progress.set()
                if self._stopping:
                    return
                backoff = min(self.max_backoff, max(backoff * 2, 0.1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_for_stop(), backoff)
                continue
            backoff = 0.0
            self._progress.set()
            if self._stopping and (not did_work or (deadline is not None and time.monotonic() > deadline)):
                return

    async def _wait_for_stop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()

    def _has_work(self) -> bool:
        return bool(
            self._inflight
            or len(self._queue) >= self.batch_size
            or self._orphans
            or any(segment.sealed and segment.overflowed for segment in self.journal.segments)
        )

    def _idle_timeout(self) -> float:
        # ledger_flush_seconds=0 means "write as soon as a record comes": record() wakes the writer itself.
        flush = self.flush_seconds or self.maintenance_seconds
        return max(min(flush, self._next_maintenance - time.monotonic()), 0.001)

    def _note_failure(self, exc: BaseException) -> None:
        self.stats.db_errors += 1
        name = type(exc).__name__
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
        was_ok = self._db_ok
        self._db_ok = False
        self.last_error = f"{name}: {exc or 'no answer in time'}"[:500]
        # A traceback for the first failure of a run, one line for the next ones: an outage must not flood the log.
        if was_ok:
            logger.exception("ledger write failed; records stay in the journal and will be retried")
        else:
            logger.warning("ledger write failed again (%d behind): %s", self.lag, self.last_error)

    async def _step(self) -> bool:
        """One unit of work: a queued batch, else a chunk of a journal replay. False if there was none."""
        if not self._inflight and self._queue:
            # Small batches keep each write short (tail latency of the requests sharing the loop); a backlog is
            # written in larger ones, whose per-transaction cost is spread over more rows, so it drains.
            backlog = len(self._queue)
            size = self.batch_size if backlog < 4 * self.batch_size else 10 * self.batch_size
            for _ in range(min(size, backlog)):
                self._inflight.append(self._queue.popleft())
        if self._inflight:
            await self._write([record for record, _ in self._inflight])
            for _, segment in self._inflight:
                if segment is None:
                    self._unjournaled -= 1
                else:
                    segment.committed += 1
            self._inflight.clear()
            self._db_ok = True
            return True
        if await self._replay_one_chunk():
            self._db_ok = True
            return True
        return False

    async def _write(self, records: Sequence[UsageRecord]) -> None:
        try:
            inserted = await write_batch(self.engine, records)
        except Exception:  # Which error it was matters less than whether the database is there at all.
            if not await self._reachable():
                raise
            # Reachable, yet the batch failed: find the records the database refuses, so they cannot block the rest.
            inserted = await self._write_one_by_one(records)
        self.stats.written += inserted
        self.stats.duplicates += len(records) - inserted

    async def _write_one_by_one(self, records: Sequence[UsageRecord]) -> int:
        inserted = 0
        for record in records:
            try:
                inserted += await write_batch(self.engine, [record])
            except Exception as exc:  # As above: only a refusal by a reachable database sets a record aside.
                if not await self._reachable():
                    raise
                self._reject(record, exc)
        return inserted

    async def _reachable(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # Any failure to run SELECT 1 means "not reachable"; the caller re-raises the first error.
            return False
        return True

    def _reject(self, record: UsageRecord, exc: Exception) -> None:
        """Keeps a record the database refuses in `rejected.jsonl` next to the journal, for a human to look at;
        it is not replayed (it would be refused again and block the writer)."""
        self.stats.rejected += 1
        logger.error("usage record %s refused by the database, set aside: %s", record.request_id, exc)
        fd = os.open(self.journal.directory / "rejected.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, record.to_json() + b"\n")
        finally:
            os.close(fd)

    async def _replay_one_chunk(self) -> bool:
        segment = self._orphans[0] if self._orphans else None
        if segment is None and len(self._queue) < self.batch_size:
            # Own segments holding records that overflowed the queue: replay them once the queue is drained.
            active = self.journal.active
            if active is not None and active.overflowed:
                self.journal.rotate()
            segment = next((s for s in self.journal.segments if s.sealed and s.overflowed), None)
        if segment is None:
            return False
        chunk = Journal.read_chunk(segment)
        if chunk.records:
            await self._write(chunk.records)
        self.stats.bad_journal_lines += chunk.bad_lines
        segment.replay_offset = chunk.next_offset
        if not segment.owned:
            segment.committed += len(chunk.records) + chunk.bad_lines
        if chunk.at_end:
            self.stats.replayed_segments += 1
            if segment in self._orphans:
                self._orphans.remove(segment)
            self.journal.discard(segment)
            logger.info("replayed journal segment %s", segment.path.name)
        return True

    async def _maintain(self) -> None:
        """Housekeeping after every step: cheap checks each time, orphan scans and retention on their own timers."""
        for segment in list(self.journal.segments):
            if segment.sealed and not segment.overflowed and segment.committed >= segment.appended:
                self.journal.discard(segment)
        active = self.journal.active
        if (
            active is not None
            and active.appended
            and (active.size >= self.segment_bytes or self.journal.age(active) >= self.segment_seconds)
        ):
            self.journal.rotate()
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.maintenance_seconds
            # Segments of processes that died while this one runs.
            self._orphans.extend(self.journal.claim_orphans())
        if self.retention_days and now >= self._next_retention:
            self._next_retention = now + self.retention_seconds
            await self.apply_retention()

    async def apply_retention(self, today: date | None = None) -> int:
        """Deletes raw rows older than `ledger_retention_days` whole UTC days; rollups are kept forever."""
        if not self.retention_days:
            return 0
        today = today or datetime.now(UTC).date()
        deleted = await delete_raw_before(self.engine, today - timedelta(days=self.retention_days))
        self.stats.deleted_raw_rows += deleted
        if deleted:
            logger.info("retention: deleted %d raw usage records older than %d days", deleted, self.retention_days)
        return deleted

    # -- reads -------------------------------------------------------------------------------------------------

    async def spend_since(self, since: datetime, by: Literal["team", "key"]) -> dict[str, Decimal]:
        """Priced spend in USD (exact) per team or key id since `since`, from what the database holds: rollups for
        whole days, raw rows for a partial first day. Unpriced usage adds nothing. Records still in a journal (see
        `lag`) are not counted: `await flush()` first to include this process's own."""
        return await reports.spend_since(self.engine, since, by)
