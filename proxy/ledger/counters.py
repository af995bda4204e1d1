"""The ledger writer's live counts, shared by its parts; `LedgerStats` is their snapshot.

The request path (`intake.py`), the batches (`batches.py`) and the flusher (`flusher.py`)
each add to the counts of what they do; `LedgerWriter.stats()` copies them out.
"""

from __future__ import annotations

from ..stats import LedgerStats


class WriterCounters:
    """Plain integers: the request path adds to them on every record, so no properties."""

    __slots__ = (
        "database_errors",
        "flushes",
        "last_flush_seconds",
        "queue_depth",
        "records_duplicate",
        "records_enqueued",
        "records_quarantined",
        "records_replayed",
        "records_salvaged",
        "records_spooled",
        "records_written",
    )

    def __init__(self) -> None:
        self.queue_depth = 0  # records held in memory (not counters: goes up and down)
        self.last_flush_seconds = 0.0
        self.records_enqueued = 0
        self.records_written = 0  # inserted into the database
        self.records_duplicate = 0  # already there (a replay of a written record)
        self.records_spooled = 0  # kept on disk only: database away or queue over its limit
        self.records_replayed = 0  # read back from disk into the database
        self.records_quarantined = 0  # refused even with a marker: not in the database
        self.records_salvaged = 0  # refused, then written with their metadata replaced
        self.database_errors = 0  # failed flush attempts
        self.flushes = 0

    def snapshot(self, *, database_up: bool, journal_errors: int) -> LedgerStats:
        return LedgerStats(
            spools=True, database_up=database_up, queue_depth=self.queue_depth,
            last_flush_seconds=self.last_flush_seconds, records_enqueued=self.records_enqueued,
            records_written=self.records_written, records_duplicate=self.records_duplicate,
            records_spooled=self.records_spooled, records_replayed=self.records_replayed,
            records_quarantined=self.records_quarantined, records_salvaged=self.records_salvaged,
            journal_errors=journal_errors, database_errors=self.database_errors,
            flushes=self.flushes)
