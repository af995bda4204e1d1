"""How a segment's records reach the database: transactions over the sink's connections.

Records are split by key over the sink's connections (`partition`) and cut into
transactions of at most `max_batch`. A batch the database refuses for its data
(`RecordError`) is bisected until the bad record is alone, while the good ones all land.
The bad one is written again with its metadata replaced by a marker (salvage.py), so its
cost still reaches the ledger and the rollups; its original is set aside in the journal
directory's quarantine file for an operator. Only a record refused even so is quarantined
without a trace in the database (its cost then missing: the alert pages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .counters import WriterCounters
from .journal import Journal
from .record import UsageRecord
from .salvage import salvaged
from .sink import RecordError, Sink

log = logging.getLogger("proxy.ledger")


class Batches:
    """Writes records into the sink (the lanes' transactions, the spool path's segments)."""

    def __init__(self, sink: Sink, journal: Journal, counters: WriterCounters, *,
                 max_batch: int, flush_rows: int, write_timeout_s: float) -> None:
        self._sink = sink
        self._journal = journal  # the quarantine file
        self._counters = counters
        self.max_batch = max_batch
        self._flush_rows = flush_rows
        self._write_timeout = write_timeout_s

    @property
    def lanes(self) -> int:
        """How many transactions the sink runs at once."""
        return max(1, self._sink.concurrency)

    def partition(self, records: Sequence[UsageRecord]) -> list[list[UsageRecord]]:
        """Records by lane, by key: concurrent transactions upsert disjoint rows of the
        per-key rollups (they meet only on the small keyless ones, written last), and the
        records of one key are never written by two transactions at once. Order inside a
        segment does not matter: inserts are idempotent, rollup sums commute."""
        lanes = self.lanes
        parts: list[list[UsageRecord]] = [[] for _ in range(lanes)]
        for r in records:
            parts[hash(r.key_id) % lanes].append(r)
        return parts

    async def write_all(self, records: Sequence[UsageRecord]) -> None:
        """One segment's records, split over the sink's connections (the spool path)."""
        size, lanes = self.max_batch, self.lanes
        parts: list[Sequence[UsageRecord]] = [records]
        if lanes > 1 and len(records) >= 2 * self._flush_rows:
            parts = [p for p in self.partition(records) if p]
        chunks = [p[i : i + size] for p in parts for i in range(0, len(p), size)]
        if lanes == 1 or len(chunks) == 1:
            for chunk in chunks:
                await self.write(chunk)
            return
        gate = asyncio.Semaphore(lanes)

        async def lane(chunk: Sequence[UsageRecord]) -> None:
            async with gate:
                await self.write(chunk)

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the others
                for chunk in chunks:
                    group.create_task(lane(chunk))
        except ExceptionGroup as e:
            raise e.exceptions[0] from None

    async def write(self, batch: Sequence[UsageRecord]) -> None:
        """One transaction; a refused batch is bisected. Raises when the database is away."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._write_timeout):
                inserted = await self._sink.write(batch)
            self._counters.last_flush_seconds = time.perf_counter() - started
        except RecordError as e:
            if len(batch) == 1:
                await self._salvage(batch[0], e)
                return
            # Bisect: O(log n) extra transactions per bad record; the good ones all land.
            mid = len(batch) // 2
            await self.write(batch[:mid])
            await self.write(batch[mid:])
            return
        self._counters.records_written += inserted
        self._counters.records_duplicate += len(batch) - inserted

    async def _salvage(self, record: UsageRecord, error: Exception) -> None:
        """Write the refused record again with its metadata replaced by a marker. A database
        that is away raises through, as for any batch: the segment is replayed later."""
        try:
            async with asyncio.timeout(self._write_timeout):
                inserted = await self._sink.write([salvaged(record)])
        except RecordError as again:
            self._quarantine(record, again)
            return
        self._counters.records_written += inserted
        self._counters.records_duplicate += 1 - inserted
        if not inserted:
            return  # a replay: counted and set aside the first time
        self._counters.records_salvaged += 1
        log.error("ledger: record %s written with its metadata replaced by a marker (the "
                  "database refused it: %s); the original is in the quarantine file",
                  record.request_id, error)
        self._journal.set_aside(record, str(error), in_database=True)

    def _quarantine(self, record: UsageRecord, error: Exception) -> None:
        self._counters.records_quarantined += 1
        log.error("ledger: record %s quarantined (the database refuses it even with its "
                  "metadata replaced): %s", record.request_id, error)
        self._journal.set_aside(record, str(error), in_database=False)
