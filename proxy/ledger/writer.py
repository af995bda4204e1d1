"""The ledger writer: the request path enqueues, one background task writes batches.

`enqueue` is synchronous and never touches the database: it appends the record to the
journal (see journal.py; the bytes reach the file at the end of the event-loop iteration,
one write for all the records of that iteration) and keeps it in memory while the queue is
under `queue_limit`. Past the limit the current segment stops keeping records in memory and
is read back from its file when its turn comes, so memory stays bounded whatever the
database does.

The flusher wakes every `flush_interval_ms` or as soon as `flush_rows` records are waiting,
closes the current segment and writes the backlog of closed segments oldest first, in
transactions of at most `max_batch` records. A segment is deleted once written. When the
database is away (any error that is not about a record's data) the backlog stays on disk
as the spool, new records go to disk only, and the writer retries with exponential backoff;
the first successful write replays the spool in order. A batch the database refuses for
its data is bisected until the bad record is alone, and that one is quarantined.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import msgspec

from ..config import LedgerConfig
from .journal import Journal, Segment
from .lanes import Lanes
from .record import UsageRecord

log = logging.getLogger("proxy.ledger")

_ORPHAN_SCAN_S: Final = 30.0
_encode = msgspec.json.Encoder().encode


class RecordError(Exception):
    """The database refused a batch because of the data in it (not because it is away)."""


class Sink(Protocol):
    # How many write() calls may run at once (separate connections and transactions).
    concurrency: int

    async def write(self, records: Sequence[UsageRecord]) -> int:
        """Write a batch in one transaction; returns the rows actually inserted (a replayed
        record is not). Raises RecordError for bad data, anything else when unavailable."""

    async def close(self) -> None: ...


class LedgerWriter:
    """Queue, journal, flusher and the counters metrics read (plain attributes)."""

    def __init__(
        self,
        sink: Sink,
        config: LedgerConfig,
        spool_dir: Path,
        *,
        max_batch: int | None = None,
        write_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._sink = sink
        self._flush_rows = max(1, config.flush_rows)
        self._interval = max(0.001, config.flush_interval_ms / 1000)
        self._limit = max(1, config.queue_limit)
        self._max_batch = max_batch or max(self._flush_rows, 10 * self._flush_rows)
        self._write_timeout = write_timeout_s
        self._backoff_min, self._backoff_max = backoff_s
        self._backoff = self._backoff_min
        self.journal = Journal(spool_dir)
        self._current: Segment | None = None
        self._backlog: deque[Segment] = deque()
        self._pending: list[bytes] = []  # journal lines of this loop iteration
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lanes = Lanes(sink.concurrency, self._write_chunk)
        self._retry_at: float | None = None  # set while the database is away
        self._last_error = ""
        self._next_orphan_scan = 0.0
        self._closing = False
        self._closed = False
        # Read by metrics as plain attributes. queue_depth: records held in memory.
        self.queue_depth = 0
        # Counters (monotonic).
        self.records_enqueued = 0
        self.records_written = 0  # inserted into the database
        self.records_duplicate = 0  # already there (a replay of a written record)
        self.records_spooled = 0  # kept on disk only: database away or queue over its limit
        self.records_replayed = 0  # read back from disk into the database
        self.records_quarantined = 0
        self.journal_errors = 0
        self.database_errors = 0  # failed flush attempts
        self.flushes = 0
        self.last_flush_seconds = 0.0

    # --- state for metrics and readiness ---------------------------------------------

    @property
    def flush_errors(self) -> int:
        return self.database_errors

    @property
    def database_up(self) -> bool:
        return self._retry_at is None

    # --- the request path ------------------------------------------------------------

    def enqueue(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks on the database, never raises."""
        self.records_enqueued += 1
        try:
            line = _encode(record) + b"\n"
        except (TypeError, ValueError, OverflowError) as e:  # pragma: no cover - typed record
            log.error("ledger: record %s cannot be encoded: %s", record.request_id, e)
            return
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

    def _drain(self) -> None:
        """Write this iteration's journal lines in one system call."""
        self._drain_scheduled = False
        if not self._pending or self._current is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self.journal.append(self._current, data)
        except OSError as e:
            self._journal_failed(e)

    def _journal_failed(self, e: OSError) -> None:
        self.journal_errors += 1
        if self.journal_errors == 1 or self.journal_errors % 1000 == 0:
            log.error("ledger: cannot write the journal in %s (%s): records not yet in the "
                      "database are at risk", self.journal.directory, e)

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

    async def _run(self) -> None:
        while not self._closing:
            timeout = self._interval
            if self._retry_at is not None:
                timeout = max(0.0, self._retry_at - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            await self._cycle()

    # --- flushing ----------------------------------------------------------------------

    async def _cycle(self) -> None:
        now = time.monotonic()
        if self._retry_at is not None and now < self._retry_at:
            return
        if now >= self._next_orphan_scan:
            self._claim_orphans()
        try:
            if self._retry_at is None and self._lanes.running:
                # While every lane has a batch waiting, let the current segment grow: bigger
                # transactions cost less per record than more of them.
                while self._lanes.saturated() and self._retry_at is None:
                    await self._lanes.wait_free()
                self._rotate()
                await self._dispatch_backlog()
                return
            await self._lanes.settle()
            await self._write_backlog()  # the spool first, so records land in order
            self._rotate()
            await self._write_backlog()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure but bad data: the database is away
            self._went_down(e)
            return
        if self._retry_at is not None:
            log.info("ledger: database reachable again; spool replayed")
            self._retry_at = None
            self._backoff = self._backoff_min
            self._claim_orphans()
            await self._write_backlog_safely()

    async def _write_backlog_safely(self) -> None:
        try:
            await self._write_backlog()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self._went_down(e)

    def _rotate(self) -> None:
        """Close the current segment: from now on it is backlog."""
        self._drain()
        segment = self._current
        if segment is None:
            return
        self._current = None
        self._backlog.append(segment)

    async def _write_backlog(self) -> None:
        """Every backlog segment in order, one at a time (the spool path)."""
        while self._backlog:
            await self._write_segment(self._backlog[0])

    async def _write_segment(self, segment: Segment) -> None:
        if segment.in_memory:
            await self._write_all(segment.records)
            self.queue_depth -= len(segment.records)
        else:
            for chunk in self.journal.read(segment, self._max_batch):
                await self._write_all(chunk)
                self.records_replayed += len(chunk)
            self.records_quarantined += self.journal.take_bad_lines()
        self._backlog.remove(segment)
        self.journal.done(segment)
        self.flushes += 1

    # --- lanes: concurrent transactions while the database is up ------------------------

    async def _dispatch_backlog(self) -> None:
        """Hand closed segments to the lanes without waiting for earlier ones to finish, so
        the database always has the next batch while it commits one."""
        for segment in list(self._backlog):
            if segment.dispatched:
                continue
            if self._retry_at is not None:
                return
            if not segment.in_memory:  # spool or overflow: in order, from its file
                await self._lanes.settle()
                if self._retry_at is not None:
                    return
                await self._write_segment(segment)
                continue
            segment.dispatched = True
            segment.pending = 1  # the dispatcher's own hold, until every chunk is queued
            for lane, part in enumerate(self._partition(segment.records)):
                for i in range(0, len(part), self._max_batch):
                    segment.pending += 1
                    await self._lanes.put(lane, segment, part[i : i + self._max_batch])
            self._release(segment)

    def _partition(self, records: Sequence[UsageRecord]) -> list[list[UsageRecord]]:
        """Records by lane, by key: concurrent transactions upsert disjoint rows of the
        per-key rollups (they meet only on the small keyless ones, written last), and the
        records of one key are never written by two transactions at once. Order inside a
        segment does not matter: inserts are idempotent, rollup sums commute."""
        lanes = max(1, self._sink.concurrency)
        parts: list[list[UsageRecord]] = [[] for _ in range(lanes)]
        for r in records:
            parts[hash(r.key_id) % lanes].append(r)
        return parts

    async def _write_chunk(self, segment: Segment, chunk: Sequence[UsageRecord]) -> None:
        """A lane's work: one transaction, or nothing once the database is known away."""
        try:
            if segment.failed or self._retry_at is not None:
                segment.failed = True  # replayed from its file once the database is back
            else:
                await self._write(chunk)
        except asyncio.CancelledError:
            segment.failed = True
            raise
        except Exception as e:  # noqa: BLE001 - not bad data: the database is away
            segment.failed = True
            if self._retry_at is None:
                self._went_down(e)
                self._lanes.wake()  # the dispatcher has nothing to wait for now
        finally:
            self._release(segment)

    def _release(self, segment: Segment) -> None:
        """A chunk of the segment is done; once all are, and all landed, delete it."""
        segment.pending -= 1
        if segment.pending or segment.failed:
            return
        self._backlog.remove(segment)
        if segment.in_memory:
            self.queue_depth -= len(segment.records)
        self.journal.done(segment)
        self.flushes += 1

    async def _write_all(self, records: Sequence[UsageRecord]) -> None:
        """One segment's records, split over the sink's connections (the spool path)."""
        size, lanes = self._max_batch, self._sink.concurrency
        parts: list[Sequence[UsageRecord]] = [records]
        if lanes > 1 and len(records) >= 2 * self._flush_rows:
            parts = [p for p in self._partition(records) if p]
        chunks = [p[i : i + size] for p in parts for i in range(0, len(p), size)]
        if lanes == 1 or len(chunks) == 1:
            for chunk in chunks:
                await self._write(chunk)
            return
        gate = asyncio.Semaphore(lanes)

        async def lane(chunk: Sequence[UsageRecord]) -> None:
            async with gate:
                await self._write(chunk)

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the others
                for chunk in chunks:
                    group.create_task(lane(chunk))
        except ExceptionGroup as e:
            raise e.exceptions[0] from None

    async def _write(self, batch: Sequence[UsageRecord]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._write_timeout):
                inserted = await self._sink.write(batch)
            self.last_flush_seconds = time.perf_counter() - started
        except RecordError as e:
            if len(batch) == 1:
                self._quarantine(batch[0], e)
                return
            # Bisect: O(log n) extra transactions per bad record; the good ones all land.
            mid = len(batch) // 2
            await self._write(batch[:mid])
            await self._write(batch[mid:])
            return
        self.records_written += inserted
        self.records_duplicate += len(batch) - inserted

    def _quarantine(self, record: UsageRecord, error: Exception) -> None:
        self.records_quarantined += 1
        log.error("ledger: record %s quarantined (the database refuses it): %s",
                  record.request_id, error)
        try:
            self.journal.quarantine(record, str(error))
        except OSError as e:
            self._journal_failed(e)

    def _went_down(self, error: Exception) -> None:
        self.database_errors += 1
        first = self._retry_at is None
        self._backoff = self._backoff_min if first else min(self._backoff * 2,
                                                            self._backoff_max)
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
        self._drain()
        for segment in self._backlog:
            self._spool(segment)
        if self._current is not None:
            self._spool(self._current)
        reason = f"{type(error).__name__}: {error}"
        if first:
            log.warning("ledger: database unavailable (%s); spooling to %s and retrying",
                        reason, self.journal.directory)
        elif reason != self._last_error:
            log.warning("ledger: still unavailable, now: %s", reason)
        self._last_error = reason

    def _spool(self, segment: Segment, sync: bool = True) -> None:
        """The segment's records live on disk only from now on."""
        if segment.in_memory:
            self.queue_depth -= len(segment.records)
            segment.drop_memory()
        if not segment.spooled:
            segment.spooled = True
            self.records_spooled += segment.count
            if sync:
                self.journal.sync(segment)

    def _claim_orphans(self) -> None:
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_S
        held = {s.path for s in self._backlog}
        if self._current is not None:
            held.add(self._current.path)
        try:
            orphans = self.journal.claim_orphans(held)
        except OSError as e:  # pragma: no cover - an unreadable spool directory
            self._journal_failed(e)
            return
        if orphans:
            log.info("ledger: replaying %d spool file(s) left by stopped workers", len(orphans))
            self._backlog.extend(orphans)
