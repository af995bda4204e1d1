"""The ledger writer: the request path enqueues, one background task writes batches.

`enqueue` is synchronous and never touches the database: it appends the record to the
journal (see journal.py; the bytes reach the file at the end of the event-loop iteration,
one write for all the records of that iteration) and keeps it in memory while the queue is
under `queue_limit`. Past the limit the current segment stops keeping records in memory and
is read back from its file when its turn comes, so memory stays bounded whatever the
database does.

This module owns `LedgerWriter`, the class the SQL ledgers build on: `enqueue` (the
request path), and `start` and `close` (the lifecycle: claim dead workers' spool files;
flush everything at SIGTERM, leaving on disk what the database does not take). The rest:
`writer_state.py` (the state, journal lines, spooling), `flusher.py` (the background task,
the backlog, the lanes, the database being away), `batches.py` (transactions, bisection,
quarantine), `sink.py` (the database interface).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from .flusher import Flusher
from .record import UsageRecord
from .salvage import salvaged
from .sink import RecordError

# RecordError: postgres.py and sqlite.py import it from here.
__all__ = ["LedgerWriter", "RecordError"]

log = logging.getLogger("proxy.ledger")

_encode = msgspec.json.Encoder().encode


class LedgerWriter(Flusher):
    """Queue, journal, flusher and the counters metrics read (plain attributes)."""

    # --- the request path ------------------------------------------------------------

    def enqueue(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks on the database, never raises."""
        self.records_enqueued += 1
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
                segment = self._current = self.journal.open_segment(self._retry_at is None)
            except OSError as e:
                self._journal_failed(e)
                return
            segment.spooled = not segment.in_memory
        segment.count += 1
        self._pending.append(line)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)
        if not segment.in_memory:
            self.records_spooled += 1
        elif self.queue_depth < self._limit:
            segment.records.append(record)
            self.queue_depth += 1
            if len(segment.records) >= self._flush_rows:
                self._wake.set()
        else:
            log.warning("ledger: queue limit (%d) reached: records go to the spool file",
                        self._limit)
            self._spool(segment, sync=False)  # no fsync on the request path

    def _unencodable(self, record: UsageRecord,
                     error: Exception) -> tuple[UsageRecord, bytes] | None:
        try:
            copy = salvaged(record)
            line = _encode(copy) + b"\n"
        except (TypeError, ValueError, OverflowError) as e:
            self.records_quarantined += 1
            log.error("ledger: record %s cannot be encoded, even salvaged: %s",
                      record.request_id, e)
            self._set_aside(record, f"cannot be encoded: {e}", in_database=False)
            return None
        self.records_salvaged += 1
        log.error("ledger: record %s journaled with its metadata replaced by a marker (%s)",
                  record.request_id, error)
        self._set_aside(record, f"cannot be encoded: {error}", in_database=True)
        return copy, line

    def _write_late(self, line: bytes) -> None:
        try:
            self.journal.ensure_dir()
            self.journal.write_late(line)
            self.records_spooled += 1
        except OSError as e:
            self._journal_failed(e)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal and claim the spool files that dead writers left."""
        self.journal.ensure_dir()
        self._loop = asyncio.get_running_loop()
        self._claim_orphans()
        if self._lanes.count > 1:
            self._lanes.start()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")
        if self._backlog:
            self._wake.set()

    async def close(self) -> None:
        """Flush everything (SIGTERM path). What the database does not take stays on disk."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._lanes.settle()
        self._lanes.stop()
        self._retry_at = None  # one last attempt, whatever the backoff said
        for _ in range(3):  # again if a late request enqueued meanwhile
            await self._cycle()
            if self._current is None or not self.database_up:
                break
        self._drain()
        if self._current is not None:
            self._backlog.append(self._current)
            self._current = None
        for segment in self._backlog:
            if segment.count or not segment.in_memory:
                self.journal.sync(segment)
            self.journal.release(segment)
        if self._backlog:
            log.warning("ledger: %d spool file(s) left in %s for the next start",
                        len(self._backlog), self.journal.directory)
        self._backlog.clear()
        self.queue_depth = 0
        self._closed = True
        self.journal.close()
        await self._sink.close()
