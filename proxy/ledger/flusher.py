"""The ledger's background task: when to flush, and the backlog into the database in order.

The flusher wakes every `flush_interval_ms` or as soon as `flush_rows` records are waiting,
closes the current segment and writes the backlog of closed segments oldest first (in
transactions of at most `max_batch` records, see batches.py). A segment is deleted once
written. While the database is up, segments held in memory go to the lanes (lanes.py)
without waiting for earlier ones, so the database always has the next batch while it
commits one. When the database is away (any error that is not about a record's data) the
backlog stays on disk as the spool, new records go to disk only, and the flusher retries
with exponential backoff; the first successful write replays the spool in order. Spool
files that stopped workers left are claimed here too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Final

from .batches import BatchWriter
from .journal import Segment
from .record import UsageRecord

log = logging.getLogger("proxy.ledger")

_ORPHAN_SCAN_S: Final = 30.0


class Flusher(BatchWriter):
    """The background task of a `LedgerWriter` (started by `start`, drained by `close`)."""

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

    # --- the database away, spool files -------------------------------------------------

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
