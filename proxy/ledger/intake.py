"""The request path's side of the ledger writer: the current segment and its journal lines.

`enqueue` is synchronous and never touches the database: it appends the record to the
journal (journal.py; the bytes reach the file at the end of the event-loop iteration, one
write for all the records of that iteration) and keeps it in memory while the queue is
under `queue_limit`. Past the limit the current segment stops keeping records in memory and
is read back from its file when its turn comes, so memory stays bounded whatever the
database does, while the disk takes the journal. When it does not (the segment's file cannot
be created, or a write to a segment whose records are in memory fails) the segment goes on
without a file: its records stay in memory whatever the limit, as the only copy, and it
asks for a file again every `FILE_RETRY_S` (which then gets them all). A failed write to a
segment already past the limit loses that write's lines. The flusher takes the current
segment (`take`) when it is time to write it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import msgspec

from .backoff import Backoff
from .counters import WriterCounters
from .journal import Journal, Segment
from .record import UsageRecord
from .salvage import salvaged

log = logging.getLogger("proxy.ledger")

_encode = msgspec.json.Encoder().encode

FILE_RETRY_S: Final = 1.0  # how often a segment without a file tries to get one


class Intake:
    """The current segment, this loop iteration's journal lines, and the queue limit."""

    __slots__ = ("_backoff", "_closed", "_counters", "_current", "_drain_scheduled",
                 "_file_retry_at", "_flush_rows", "_journal", "_limit", "_loop", "_pending",
                 "_wake")

    def __init__(self, journal: Journal, counters: WriterCounters, backoff: Backoff,
                 wake: asyncio.Event, *, queue_limit: int, flush_rows: int) -> None:
        self._journal = journal
        self._counters = counters
        self._backoff = backoff  # while the database is away, new segments stay on disk
        self._wake = wake  # the flusher's: set when a segment has `flush_rows` records
        self._limit = queue_limit
        self._flush_rows = flush_rows
        self._current: Segment | None = None
        self._pending: list[bytes] = []  # journal lines of this loop iteration
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._file_retry_at = 0.0  # a segment without a file asks for one again after this

    @property
    def current(self) -> Segment | None:
        return self._current

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def close(self) -> None:
        """From now on a record goes straight to a segment file of its own."""
        self._closed = True

    # --- the request path ------------------------------------------------------------------

    def enqueue(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks on the database, never raises."""
        counters = self._counters
        counters.records_enqueued += 1
        try:
            line = _encode(record) + b"\n"
        except (TypeError, ValueError, OverflowError) as e:
            # A lone surrogate in a string, say: the journal takes the salvaged copy, so the
            # cost is still written.
            copy = self._unencodable(record, e)
            if copy is None:
                return
            record, line = copy
        if self._loop is None or self._closed:
            self._write_late(line)
            return
        segment = self._current
        if segment is None:
            try:
                segment = self._journal.open_segment(self._backoff.up)
            except OSError as e:  # no file: the records wait in memory, not lost
                self._journal.failed(e)
                segment = Segment.without_file()
                self._file_retry_at = time.monotonic() + FILE_RETRY_S
            self._current = segment
            segment.spooled = not segment.in_memory
        elif segment.path is None and time.monotonic() >= self._file_retry_at:
            self._pending.clear()  # their records are in the segment: its file gets them all
            if not self._journal.give_file(segment):
                self._file_retry_at = time.monotonic() + FILE_RETRY_S
        segment.count += 1
        self._pending.append(line)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self.drain)
        if not segment.in_memory:
            counters.records_spooled += 1
        elif counters.queue_depth < self._limit or not segment.has_file:
            segment.records.append(record)
            counters.queue_depth += 1
            if len(segment.records) >= self._flush_rows:
                self._wake.set()
        else:
            log.warning("ledger: queue limit (%d) reached: records go to the spool file",
                        self._limit)
            self.spool(segment, sync=False)  # no fsync on the request path

    def _unencodable(self, record: UsageRecord,
                     error: Exception) -> tuple[UsageRecord, bytes] | None:
        try:
            copy = salvaged(record)
            line = _encode(copy) + b"\n"
        except (TypeError, ValueError, OverflowError) as e:
            self._counters.records_quarantined += 1
            log.error("ledger: record %s cannot be encoded, even salvaged: %s",
                      record.request_id, e)
            self._journal.set_aside(record, f"cannot be encoded: {e}", in_database=False)
            return None
        self._counters.records_salvaged += 1
        log.error("ledger: record %s journaled with its metadata replaced by a marker (%s)",
                  record.request_id, error)
        self._journal.set_aside(record, f"cannot be encoded: {error}", in_database=True)
        return copy, line

    def _write_late(self, line: bytes) -> None:
        if self._journal.write_late(line):
            self._counters.records_spooled += 1

    # --- the segment -----------------------------------------------------------------------

    def drain(self) -> None:
        """Write this iteration's journal lines in one system call."""
        self._drain_scheduled = False
        if not self._pending or self._current is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._current.has_file:  # its records are in memory: nowhere to write them
            return
        try:
            self._journal.append(self._current, data)
        except OSError as e:
            self._journal.failed(e)
            if self._current.in_memory:  # its file misses these lines: memory is the copy
                self._journal.drop_file(self._current)
                self._file_retry_at = time.monotonic() + FILE_RETRY_S

    def take(self) -> Segment | None:
        """The current segment, its lines written, handed to the flusher: a new record
        opens a new one."""
        self.drain()
        segment, self._current = self._current, None
        return segment

    def spool(self, segment: Segment, sync: bool = True) -> None:
        """The segment's records live on disk only from now on (unless it has no file:
        then they stay in memory)."""
        if not segment.has_file:
            return
        if segment.in_memory:
            self._counters.queue_depth -= len(segment.records)
            segment.drop_memory()
        if not segment.spooled:
            segment.spooled = True
            self._counters.records_spooled += segment.count
            if sync:
                self._journal.sync(segment)
