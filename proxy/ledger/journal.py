"""The writer's local journal: append-only segment files of JSON lines, one record a line.

Every record is appended to the current segment as it is enqueued, before any database
sees it, so a worker killed with SIGKILL leaves its unwritten records on disk. A segment is
deleted once all its records are in the database; a segment that could not be written is
the spool, replayed when the database is back. Each segment is held under an exclusive
`flock` by the process that owns it for as long as it is open; a segment nobody holds
belongs to a dead process and is claimed (lock, check it is still the same file, replay,
delete) by whichever live worker gets its lock first. The lock dies with its process, so
there is no stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from .record import UsageRecord

log = logging.getLogger("proxy.ledger")

PREFIX: Final = "ledger-"
SUFFIX: Final = ".jsonl"
_decode = msgspec.json.Decoder(UsageRecord).decode
_encode = msgspec.json.Encoder().encode


class Segment:
    """One journal file and, while it fits the queue limit, its records in memory.

    A segment without a file (`path` None: its file could not be created, a full disk or
    no file descriptor left) keeps its records in memory whatever the queue limit: they
    reach the database from there, and are the only copy until they do."""

    __slots__ = ("count", "dispatched", "failed", "fd", "in_memory", "path", "pending",
                 "records", "spooled")

    def __init__(self, path: Path | None, fd: int, in_memory: bool) -> None:
        self.path = path
        self.fd = fd  # open (and flock-ed) until the segment is written or handed on
        self.count = 0
        self.records: list[UsageRecord] = []
        self.in_memory = in_memory  # False: `records` is not kept; read the file back
        self.spooled = False  # counted in records_spooled already
        # Written by the writer's lanes: chunks not finished yet, and whether one failed (then
        # the whole segment is replayed from its file later; what landed is skipped).
        self.dispatched = False
        self.pending = 0
        self.failed = False

    @classmethod
    def without_file(cls) -> Segment:
        return cls(None, -1, True)

    @property
    def has_file(self) -> bool:
        return self.path is not None

    def drop_memory(self) -> None:
        assert self.path is not None, "the records of a segment without a file are its only copy"
        self.in_memory = False
        self.records = []


class Journal:
    """Segment files of one writer in `directory`, the claiming of orphaned ones, and the
    quarantine file; `errors` counts the writes that failed (for metrics)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # pid for the operator; the random part keeps two writers (or a recycled pid) apart.
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0
        self._quarantine_fd: int | None = None
        self._bad_lines = 0
        self.errors = 0

    def failed(self, e: OSError) -> None:
        """A write of the journal failed: counted, and logged once a thousand."""
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.error("ledger: cannot write the journal in %s (%s): records not yet in the "
                      "database are at risk", self.directory, e)

    def ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def open_segment(self, in_memory: bool) -> Segment:
        self._seq += 1
        # Time first so that a directory listing sorts segments of all writers oldest first.
        name = f"{PREFIX}{time.time_ns():020d}-{self.owner}-{self._seq:06d}{SUFFIX}"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd, in_memory)

    @staticmethod
    def append(segment: Segment, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(segment.fd, view)
            view = view[written:]

    @staticmethod
    def sync(segment: Segment) -> None:
        if segment.fd < 0:
            return
        try:
            os.fsync(segment.fd)
        except OSError:  # pragma: no cover - best effort before handing the file on
            pass

    @staticmethod
    def done(segment: Segment) -> None:
        """Every record of the segment is in the database: delete it (still under lock)."""
        if segment.path is None:
            return
        try:
            segment.path.unlink()
        except FileNotFoundError:  # pragma: no cover
            pass
        os.close(segment.fd)
        segment.fd = -1

    @staticmethod
    def release(segment: Segment) -> None:
        """Leave the segment on disk for a later start (or another worker) to replay."""
        if segment.fd >= 0:
            os.close(segment.fd)
            segment.fd = -1

    def read(self, segment: Segment, batch: int) -> Iterator[list[UsageRecord]]:
        """The segment's records in order, `batch` at a time. A line that does not decode
        (a write cut short by a kill) is quarantined, never fatal."""
        chunk: list[UsageRecord] = []
        assert segment.path is not None, "a segment without a file is read from memory"
        with open(segment.path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    chunk.append(_decode(line))
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    self.quarantine_line(line.rstrip(b"\n"), f"unreadable spool line: {e}",
                                         segment.path.name)
                    continue
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def claim_orphans(self, held: set[Path]) -> list[Segment]:
        """Segments of dead writers, locked for this one, oldest first."""
        try:
            names = sorted(p for p in os.listdir(self.directory)
                           if p.startswith(PREFIX) and p.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        claimed = []
        for name in names:
            path = self.directory / name
            if path in held:
                continue
            segment = self._claim(path)
            if segment is not None:
                claimed.append(segment)
        return claimed

    @staticmethod
    def _claim(path: Path) -> Segment | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # replayed and deleted by another worker meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # a live writer holds it
        try:
            # Another worker may have replayed and unlinked the file between our open and our
            # lock: then the lock is on a ghost and replaying it again would be wasted work.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            os.close(fd)
            return None
        segment = Segment(path, fd, in_memory=False)
        segment.spooled = True
        return segment

    def write_late(self, data: bytes) -> bool:
        """Lines with no segment of the writer's to go to (a record enqueued after close(),
        or held only in memory at close): a segment file of their own, left for the next
        start to replay. False (the failure counted and logged) when the disk refused."""
        try:
            self.ensure_dir()
            segment = self.open_segment(in_memory=False)
            try:
                self.append(segment, data)
            finally:
                self.release(segment)
        except OSError as e:
            self.failed(e)
            return False
        return True

    def keep_late(self, records: list[UsageRecord]) -> None:
        """Records held only in memory (their segment had no file) at close, the database
        away: a last try to leave them on disk for the next start; else they are lost, and
        the log says how many."""
        if records and not self.write_late(b"".join(_encode(r) + b"\n" for r in records)):
            log.error("ledger: %d record(s) reached neither the database nor the disk; they "
                      "are lost", len(records))

    def give_file(self, segment: Segment) -> bool:
        """A segment without a file gets one, holding its records so far: False when the
        disk still refuses (counted, not logged again)."""
        assert segment.path is None
        try:
            self.ensure_dir()
            fresh = self.open_segment(in_memory=True)
        except OSError:
            self.errors += 1
            return False
        segment.path, segment.fd = fresh.path, fresh.fd
        try:
            self.append(segment, b"".join(_encode(r) + b"\n" for r in segment.records))
        except OSError as e:
            self.failed(e)
            self.drop_file(segment)
            return False
        return True

    def drop_file(self, segment: Segment) -> None:
        """The segment's file missed lines (a write failed); its records are all in memory,
        which is the copy from now on: the partial file goes."""
        assert segment.in_memory and segment.path is not None
        path, fd = segment.path, segment.fd
        segment.path, segment.fd = None, -1
        try:
            path.unlink()
        except OSError:
            pass  # a later start replays it; the database skips what it has already
        os.close(fd)

    def quarantine(self, record: UsageRecord, reason: str, salvaged: bool = False) -> None:
        """Set a refused record aside. `salvaged`: a copy with its metadata replaced is in
        the database (its cost counted); this line keeps what was replaced."""
        entry: dict[str, object] = {"reason": reason, "salvaged": salvaged, "record": record}
        try:
            data = _encode(entry)
        except (TypeError, ValueError, OverflowError):  # a lone surrogate: keep it escaped
            entry["record"] = ascii(record)
            data = _encode(entry)
        self._quarantine_write(data)

    def set_aside(self, record: UsageRecord, reason: str, in_database: bool) -> None:
        """Keep a refused record's original in the quarantine file; `in_database`: a salvaged
        copy is in the database. A failed write is counted, never raised."""
        try:
            self.quarantine(record, reason, salvaged=in_database)
        except OSError as e:
            self.failed(e)

    def take_bad_lines(self) -> int:
        """Lines quarantined by read() since the last call."""
        n, self._bad_lines = self._bad_lines, 0
        return n

    def quarantine_line(self, line: bytes, reason: str, source: str) -> None:
        self._bad_lines += 1
        log.error("ledger: quarantined a line of %s: %s", source, reason)
        text = line.decode("utf-8", "replace")
        self._quarantine_write(_encode({"reason": reason, "source": source, "line": text}))

    def _quarantine_write(self, data: bytes) -> None:
        # Not a PREFIX file, so it is never replayed: an operator decides what to do with it.
        if self._quarantine_fd is None:
            path = self.directory / f"quarantine-{self.owner}{SUFFIX}"
            self._quarantine_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._quarantine_fd, data + b"\n")

    def close(self) -> None:
        if self._quarantine_fd is not None:
            os.close(self._quarantine_fd)
            self._quarantine_fd = None
