"""The local journal: usage records appended to segment files before the response completes (DESIGN.md §3).

Each process appends to its own active segment, `usage-<created ns>-<pid>-<seq>.jsonl` under the journal
directory, one `UsageRecord.to_json()` line per record, with one unbuffered `os.write()` on an `O_APPEND` file
descriptor. The bytes are in the kernel's page cache when the call returns, so they survive the process being
killed (`kill -9`) without an fsync on the request path; only a crash of the machine itself can lose them.

Every segment file a live process owns is held under an exclusive `fcntl.flock`, taken before the file gets its
final name (it is created under a dot-name and renamed once locked), so another process scanning the directory
never sees a live segment unlocked. A process that starts claims (locks) every segment whose owner is gone — the
kernel drops a dead process's locks — replays it into the database and deletes it. A segment is deleted only once
every record in it is committed to the database.

Reading tolerates a torn last line (a process killed in the middle of a write) and counts lines it cannot parse.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.accounting.records import UsageRecord

logger = logging.getLogger("tollgate.journal")

SEGMENT_PREFIX = "usage-"
SEGMENT_SUFFIX = ".jsonl"
READ_BLOCK = 1 << 20


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    # True: this process appends to it (or did, before rotating); False: an orphan claimed for replay.
    owned: bool
    created: float = field(default_factory=time.monotonic)
    size: int = 0
    # Records written to the file (owned) or found in it (orphan), and how many of them are known to be in the DB.
    appended: int = 0
    committed: int = 0
    # Records that did not fit in the in-memory queue: the file is their only copy until it is replayed.
    overflowed: int = 0
    sealed: bool = False
    # How far a replay from the file has got, in bytes.
    replay_offset: int = 0

    @property
    def pending(self) -> int:
        return max(self.appended - self.committed, 0)


@dataclass(slots=True)
class Chunk:
    records: list[UsageRecord]
    next_offset: int
    bad_lines: int
    at_end: bool


class JournalError(OSError):
    """The journal could not be written (disk full, permissions): the record is kept in memory only."""


class Journal:
    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self.active: Segment | None = None
        # Own segments, oldest first (the active one last); orphans are tracked by the ledger while replayed.
        self.segments: list[Segment] = []
        self._seq = 0

    # -- writing -----------------------------------------------------------------------------------------------

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clean_abandoned_temporaries()
        self.rotate()

    def append(self, line: bytes) -> Segment:
        """Writes one line (ending in a newline) to the active segment; returns the segment it went to."""
        segment = self.active
        if segment is None:
            raise JournalError(errno.EBADF, "the journal is not open")
        view = memoryview(line)
        while view:
            # A regular file takes the whole write unless the disk is full; the loop covers short writes anyway.
            written = os.write(segment.fd, view)
            view = view[written:]
        segment.size += len(line)
        segment.appended += 1
        return segment

    def rotate(self) -> Segment:
        """Seals the active segment (if any) and starts a new one."""
        self._seq += 1
        name = f"{SEGMENT_PREFIX}{time.time_ns()}-{os.getpid()}-{self._seq:06d}{SEGMENT_SUFFIX}"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, final)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        segment = Segment(path=final, fd=fd, owned=True, created=self.clock())
        if self.active is not None:
            self.active.sealed = True
        self.active = segment
        self.segments.append(segment)
        return segment

    def age(self, segment: Segment) -> float:
        return self.clock() - segment.created

    # -- claiming and reading ----------------------------------------------------------------------------------

    def claim_orphans(self) -> list[Segment]:
        """Locks every segment no live process holds; the caller replays and then `discard`s each one."""
        own = {segment.path.name for segment in self.segments}
        claimed: list[Segment] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return claimed
        for name in names:
            if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)) or name in own:
                continue
            segment = self._try_claim(self.directory / name)
            if segment is not None:
                claimed.append(segment)
        return claimed

    def _try_claim(self, path: Path) -> Segment | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # another process replayed and deleted it meanwhile
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process owns it, or another one is replaying it
            os.close(fd)
            return None
        size, lines = _count_lines(fd)
        return Segment(path=path, fd=fd, owned=False, created=self.clock(), size=size, appended=lines, sealed=True)

    @staticmethod
    def read_chunk(segment: Segment, block: int = READ_BLOCK) -> Chunk:
        """The complete records from `segment.replay_offset` on, about `block` bytes of them."""
        offset = segment.replay_offset
        while True:
            data = os.pread(segment.fd, block, offset)
            at_end = len(data) < block
            end = data.rfind(b"\n") + 1
            if end or at_end:
                break
            block *= 2  # a single line longer than the block: read more
        records: list[UsageRecord] = []
        bad = 0
        for line in data[:end].split(b"\n")[:-1]:
            record = _parse(line)
            if record is None:
                bad += 1
            else:
                records.append(record)
        next_offset = offset + end
        tail = data[end:] if at_end else b""
        if tail:
            # The last line lacks its newline: its writer died mid-write. Keep it if it happens to be whole.
            record = _parse(tail)
            if record is None:
                bad += 1
            else:
                records.append(record)
            next_offset += len(tail)
        return Chunk(records, next_offset, bad, at_end)

    # -- letting go --------------------------------------------------------------------------------------------

    def discard(self, segment: Segment) -> None:
        """Deletes a segment whose records are all in the database, then unlocks it (in that order, so nobody
        else can claim it in between and replay it for nothing)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        self._close(segment)

    def release(self, segment: Segment) -> None:
        """Unlocks a segment and leaves the file for the next start to replay."""
        self._close(segment)

    def _close(self, segment: Segment) -> None:
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = -1
        if segment in self.segments:
            self.segments.remove(segment)
        if segment is self.active:
            self.active = None

    def close(self) -> None:
        """Releases every own segment: empty ones are deleted, the rest stay for replay."""
        for segment in list(self.segments):
            if segment.appended == 0 or (segment.committed >= segment.appended and segment.overflowed == 0):
                self.discard(segment)
            else:
                self.release(segment)

    def _clean_abandoned_temporaries(self) -> None:
        # A process killed between creating a segment and renaming it leaves an empty dot-file, never a record.
        for path in self.directory.glob(f".{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}.tmp"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            except OSError:
                pass  # locked: a process is creating it right now
            finally:
                os.close(fd)


def _parse(line: bytes) -> UsageRecord | None:
    if not line.strip():
        return None
    try:
        return UsageRecord.from_json(line)
    except (ValueError, TypeError, KeyError, ArithmeticError):
        # orjson.JSONDecodeError is a ValueError; a missing or unknown field is a TypeError from the constructor.
        return None


def _count_lines(fd: int) -> tuple[int, int]:
    size = 0
    lines = 0
    last = b"\n"
    while chunk := os.pread(fd, READ_BLOCK, size):
        size += len(chunk)
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return size, lines + (last != b"\n")
