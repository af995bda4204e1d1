"""What each component reports about itself: small frozen snapshots read by metrics and
readiness through a typed `stats()` method, never by attribute name.

A leaf module (it imports nothing of the gateway), so the components that report and the
modules that read (`metrics/`, `health.py`) depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

S_co = TypeVar("S_co", covariant=True)


class Reports(Protocol[S_co]):
    """A component with a `stats()` snapshot."""

    def stats(self) -> S_co: ...


@dataclass(frozen=True, slots=True)
class DependencyErrors:
    """Failed calls of a component to Redis and to the database (monotonic counts)."""

    redis_errors: int = 0
    database_errors: int = 0


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """The usage ledger's writer: its queue, counters (monotonic) and the database state."""

    spools: bool = False  # records survive the database being away (kept on local disk)
    database_up: bool = True
    queue_depth: int = 0  # records held in memory, waiting for the database
    last_flush_seconds: float = 0.0
    records_enqueued: int = 0
    records_written: int = 0  # inserted into the database
    records_duplicate: int = 0  # already there (a replay of a written record)
    records_spooled: int = 0  # kept on disk only: database away or queue over its limit
    records_replayed: int = 0  # read back from disk into the database
    records_quarantined: int = 0  # refused even with a marker: not in the database
    records_salvaged: int = 0  # refused, then written with their metadata replaced
    journal_errors: int = 0  # failed writes of the local journal
    database_errors: int = 0  # failed flush attempts
    flushes: int = 0


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """The listener's connection slots: open now, and refused at the cap (monotonic)."""

    open: int = 0
    refused: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A provider's upstream connection pool, now (no pool: all zero)."""

    open: int = 0  # connections open or being opened (slots taken)
    idle: int = 0  # open and kept for reuse
    waiting: int = 0  # requests waiting for a slot: the pool is at its limit
    limit: int = 0


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """The admission journal (`ledger/inflight.py`): failed writes (monotonic)."""

    write_errors: int = 0
