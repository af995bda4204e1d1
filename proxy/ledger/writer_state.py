"""What the ledger writer keeps, and the moves on its segments that every part makes.

`WriterState` sets up all of the writer's state in one place: its settings, the current
journal segment and the backlog of closed ones, the journal lines of this event-loop
iteration, the retry state while the database is away, and the counters metrics read as
plain attributes. Its methods are the moves the request path and the flusher share: write
this iteration's journal lines (one system call), count a journal failure, and spool a
segment (its records live on disk only from then on).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..config import LedgerConfig
from ..stats import LedgerStats
from .journal import Journal, Segment
from .lanes import Lanes
from .record import UsageRecord
from .sink import Sink

log = logging.getLogger("proxy.ledger")


class WriterState:
    """The state of a `LedgerWriter`, and the moves on its segments that every part makes."""

    # A lane's work: one transaction (`Flusher._write_chunk`).
    _write_chunk: Callable[[Segment, Sequence[UsageRecord]], Awaitable[None]]

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
        self.records_quarantined = 0  # refused even with a marker: not in the database
        self.records_salvaged = 0  # refused, then written with their metadata replaced
        self.journal_errors = 0
        self.database_errors = 0  # failed flush attempts
        self.flushes = 0
        self.last_flush_seconds = 0.0

    # --- state for metrics and readiness ---------------------------------------------

    def stats(self) -> LedgerStats:
        return LedgerStats(
            spools=True, database_up=self.database_up, queue_depth=self.queue_depth,
            last_flush_seconds=self.last_flush_seconds, records_enqueued=self.records_enqueued,
            records_written=self.records_written, records_duplicate=self.records_duplicate,
            records_spooled=self.records_spooled, records_replayed=self.records_replayed,
            records_quarantined=self.records_quarantined, records_salvaged=self.records_salvaged,
            journal_errors=self.journal_errors, database_errors=self.database_errors,
            flushes=self.flushes)

    @property
    def flush_errors(self) -> int:
        return self.database_errors

    @property
    def database_up(self) -> bool:
        return self._retry_at is None

    # --- segments and the journal -----------------------------------------------------

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

