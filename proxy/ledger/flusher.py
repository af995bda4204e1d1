"""The ledger's background task: when to flush, and the backlog into the database in order.

The flusher wakes every `flush_interval_ms` or as soon as `flush_rows` records are waiting,
takes the current segment from the request path (intake.py) and writes the backlog of
closed segments oldest first (in transactions of at most `max_batch` records, see
batches.py). A segment is deleted once written. While the database is up, segments held in
memory go to the lanes (lanes.py) without waiting for earlier ones, so the database always
has the next batch while it commits one. When the database is away (any error that is not
about a record's data) the backlog stays on disk as the spool, new records go to disk
only, and the flusher retries with exponential backoff (backoff.py); the first successful
write replays the spool in order. Spool files that stopped workers left are claimed here
too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Final

from .backoff import Backoff
from .batches import Batches
from .counters import WriterCounters
from .intake import Intake
from .journal import Journal, Segment
from .lanes import Lanes
from .record import UsageRecord

log = logging.getLogger("proxy.ledger")

_ORPHAN_SCAN_S: Final = 30.0


class Flusher:
    """The background task of a `LedgerWriter` (`start`, then `close` at shutdown)."""

    def __init__(self, intake: Intake, batches: Batches, journal: Journal,
                 counters: WriterCounters, backoff: Backoff, wake: asyncio.Event, *,
                 interval_s: float) -> None:
        self._intake = intake
        self._batches = batches
        self._journal = journal
        self._counters = counters
        self._backoff = backoff
        self._wake = wake  # set by the request path when a segment is full
        self._interval = interval_s
        self._backlog: deque[Segment] = deque()
        self._lanes = Lanes(batches.lanes, self._write_chunk)
        self._task: asyncio.Task[None] | None = None
        self._next_orphan_scan = 0.0
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Claim the spool files that dead writers left and start the task."""
        self.claim_orphans()
        if self._lanes.count > 1:
            self._lanes.start()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")
        if self._backlog:
            self._wake.set()

    async def close(self) -> None:
        """Flush everything (SIGTERM path); what the database does not take stays on disk."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._lanes.settle()
        self._lanes.stop()
        self._backoff.try_now()  # one last attempt, whatever the backoff said
        for _ in range(3):  # again if a late request enqueued meanwhile
            await self._cycle()
            if self._intake.current is None or not self._backoff.up:
                break
        self._rotate()
        for segment in self._backlog:
            if not segment.has_file:
                self._journal.keep_late(segment.records)
                continue
            if segment.count or not segment.in_memory:
                self._journal.sync(segment)
            self._journal.release(segment)
        if self._backlog:
            log.warning("ledger: %d spool file(s) left in %s for the next start",
                        len(self._backlog), self._journal.directory)
        self._backlog.clear()

    async def _run(self) -> None:
        while not self._closing:
            timeout = self._interval
            retry_at = self._backoff.retry_at
            if retry_at is not None:
                timeout = max(0.0, retry_at - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            await self._cycle()

    # --- flushing ----------------------------------------------------------------------------

    async def _cycle(self) -> None:
        now = time.monotonic()
        if self._backoff.waiting(now):
            return
        if now >= self._next_orphan_scan:
            self.claim_orphans()
        was_down = not self._backoff.up
        try:
            if not was_down and self._lanes.running:
                # While every lane has a batch waiting, let the current segment grow: bigger
                # transactions cost less per record than more of them.
                while self._lanes.saturated() and self._backoff.up:
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
        if not self._backoff.up:
            self._backoff.recovered()
            self.claim_orphans()
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
        segment = self._intake.take()
        if segment is not None:
            self._backlog.append(segment)

    async def _write_backlog(self) -> None:
        """Every backlog segment in order, one at a time (the spool path)."""
        while self._backlog:
            await self._write_segment(self._backlog[0])

    async def _write_segment(self, segment: Segment) -> None:
        counters = self._counters
        if segment.in_memory:
            await self._batches.write_all(segment.records)
            counters.queue_depth -= len(segment.records)
        else:
            for chunk in self._journal.read(segment, self._batches.max_batch):
                await self._batches.write_all(chunk)
                counters.records_replayed += len(chunk)
            counters.records_quarantined += self._journal.take_bad_lines()
        self._backlog.remove(segment)
        self._journal.done(segment)
        counters.flushes += 1

    # --- lanes: concurrent transactions while the database is up ---------------------------

    async def _dispatch_backlog(self) -> None:
        """Hand closed segments to the lanes without waiting for earlier ones to finish, so
        the database always has the next batch while it commits one."""
        size = self._batches.max_batch
        for segment in list(self._backlog):
            if segment.dispatched:
                continue
            if not self._backoff.up:
                return
            if not segment.in_memory:  # spool or overflow: in order, from its file
                await self._lanes.settle()
                if not self._backoff.up:
                    return
                await self._write_segment(segment)
                continue
            segment.dispatched = True
            segment.pending = 1  # the dispatcher's own hold, until every chunk is queued
            for lane, part in enumerate(self._batches.partition(segment.records)):
                for i in range(0, len(part), size):
                    segment.pending += 1
                    await self._lanes.put(lane, segment, part[i : i + size])
            self._release(segment)

    async def _write_chunk(self, segment: Segment, chunk: Sequence[UsageRecord]) -> None:
        """A lane's work: one transaction, or nothing once the database is known away."""
        try:
            if segment.failed or not self._backoff.up:
                segment.failed = True  # replayed from its file once the database is back
            else:
                await self._batches.write(chunk)
        except asyncio.CancelledError:
            segment.failed = True
            raise
        except Exception as e:  # noqa: BLE001 - not bad data: the database is away
            segment.failed = True
            if self._backoff.up:
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
            self._counters.queue_depth -= len(segment.records)
        self._journal.done(segment)
        self._counters.flushes += 1

    # --- the database away, spool files ------------------------------------------------------

    def _went_down(self, error: Exception) -> None:
        self._counters.database_errors += 1
        self._backoff.failed(error, self._journal.directory)
        self._intake.drain()
        for segment in self._backlog:
            self._intake.spool(segment)
        current = self._intake.current
        if current is not None:
            self._intake.spool(current)

    def claim_orphans(self) -> None:
        """Take the spool files stopped writers left into the backlog, to be written before
        anything enqueued from now on."""
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_S
        held = {s.path for s in self._backlog if s.path is not None}
        current = self._intake.current
        if current is not None and current.path is not None:
            held.add(current.path)
        try:
            orphans = self._journal.claim_orphans(held)
        except OSError as e:  # pragma: no cover - an unreadable spool directory
            self._journal.failed(e)
            return
        if orphans:
            log.info("ledger: replaying %d spool file(s) left by stopped workers", len(orphans))
            self._backlog.extend(orphans)
