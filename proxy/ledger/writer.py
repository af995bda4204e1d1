"""The ledger writer: the request path enqueues, one background task writes batches.

`LedgerWriter` is the one class to read. It owns small collaborators, one module each,
and is handed the engine's specifics (PostgreSQL or SQLite) as a `Sink` to write through
and a `Reader` to report from (sink.py; postgres.py, sqlite.py):

- journal.py, `Journal`: the segment files every record is appended to first, the claiming
  of dead writers' files, the quarantine file;
- intake.py, `Intake`: the request path (`enqueue`): the current segment, in memory while
  the queue is under `queue_limit`;
- flusher.py, `Flusher`: the background task: the backlog of closed segments into the
  database in order, over the lanes (lanes.py) while it is up, spooled while it is away
  (backoff.py);
- batches.py, `Batches`: transactions, bisection of a refused batch, salvage, quarantine;
- counters.py, `WriterCounters`: the counts each part adds to; `stats()` copies them out.

`start` claims dead workers' spool files; `close` flushes everything at SIGTERM, leaving on
disk what the database does not take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from ..config import LedgerConfig
from ..stats import LedgerStats
from .backoff import Backoff
from .batches import Batches
from .counters import WriterCounters
from .flusher import Flusher
from .intake import Intake
from .journal import Journal
from .record import UsageRecord
from .report import UsageQuery, UsageReport
from .sink import Reader, Sink

log = logging.getLogger("proxy.ledger")


class WriterOptions(TypedDict, total=False):
    """The writer's tuning beyond `[ledger]` (tests shorten the waits)."""

    max_batch: int | None  # records per transaction (default: 10 x flush_rows)
    write_timeout_s: float  # one transaction
    backoff_s: tuple[float, float]  # retry delays while the database is away: first, most


class LedgerWriter:
    """A `Ledger` on a SQL database: journal, intake, flusher and batches over a sink."""

    # The request path's call, bound to the intake's own method: no call in between.
    enqueue: Callable[[UsageRecord], None]

    def __init__(
        self,
        sink: Sink,
        reader: Reader,
        config: LedgerConfig,
        spool_dir: Path,
        *,
        max_batch: int | None = None,
        write_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        flush_rows = max(1, config.flush_rows)
        self._sink = sink
        self._reader = reader
        self.journal = Journal(spool_dir)
        self._counters = WriterCounters()
        self._backoff = Backoff(backoff_s)
        wake = asyncio.Event()
        self._intake = Intake(self.journal, self._counters, self._backoff, wake,
                              queue_limit=max(1, config.queue_limit), flush_rows=flush_rows)
        self.enqueue = self._intake.enqueue
        batches = Batches(sink, self.journal, self._counters,
                          max_batch=max_batch or max(flush_rows, 10 * flush_rows),
                          flush_rows=flush_rows, write_timeout_s=write_timeout_s)
        self._flusher = Flusher(self._intake, batches, self.journal, self._counters,
                                self._backoff, wake,
                                interval_s=max(0.001, config.flush_interval_ms / 1000))
        self._closed = False

    def stats(self) -> LedgerStats:
        return self._counters.snapshot(database_up=self._backoff.up,
                                       journal_errors=self.journal.errors)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the database, open the journal, claim the spool files dead writers left."""
        await self._sink.prepare()
        self.journal.ensure_dir()
        self._intake.open(asyncio.get_running_loop())
        self._flusher.start()

    def claim_orphans(self) -> None:
        self._flusher.claim_orphans()

    async def close(self) -> None:
        """Flush everything (SIGTERM path). What the database does not take stays on disk."""
        if self._closed:
            return
        await self._flusher.close()
        self._intake.close()
        self._counters.queue_depth = 0
        self._closed = True
        self.journal.close()
        await self._sink.close()
        await self._reader.close()

    # --- reports -----------------------------------------------------------------------------

    async def report(self, query: UsageQuery) -> UsageReport:
        return await self._reader.report(query)

    async def spend(self, key_id: str, since: datetime | None) -> int:
        return await self._reader.spend(key_id, since)
