"""The usage ledger: every request's record, written behind the request path.

`Ledger` is what the rest of the gateway sees. The request path only calls `enqueue`,
which never waits on a database. `create_ledger` picks the engine from `database_url`:
PostgreSQL (postgres.py) or SQLite (sqlite.py), each a sink and a reader handed to the one
writer class, `writer.LedgerWriter` (its docstring lists the parts it owns), and answering
the same reports (report.py). `stats()` is what metrics and readiness read: the queue,
the writer's counters and whether the database is up (`proxy.stats.LedgerStats`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..config import Settings
from ..migrate import is_sqlite
from ..stats import LedgerStats
from .record import UsageRecord
from .report import UsageQuery, UsageReport, aggregate

log = logging.getLogger("proxy.ledger")


class Ledger(Protocol):
    def enqueue(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks, never raises on a database problem."""

    async def start(self) -> None:
        """Apply migrations if needed, replay spool files that stopped workers left."""

    async def close(self) -> None:
        """Flush everything queued (SIGTERM path)."""

    def claim_orphans(self) -> None:
        """Take now the spool files of stopped workers (done at start and every 30 s): their
        records are written before any enqueued after this call."""

    async def report(self, query: UsageQuery) -> UsageReport:
        """A usage report; totals equal the sum of the records, to the nano-USD."""

    async def spend(self, key_id: str, since: datetime | None) -> int:
        """nano-USD spent by a key since a time (None: ever). Records still queued are not
        counted (they land within a flush interval)."""

    def stats(self) -> LedgerStats:
        """The queue, the counters and the database state, for metrics and readiness."""


class MemoryLedger:
    """Keeps records in a list: for tests that need no database."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def enqueue(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def claim_orphans(self) -> None:
        pass  # nothing spools

    async def report(self, query: UsageQuery) -> UsageReport:
        return aggregate(self.records, query)

    def stats(self) -> LedgerStats:
        # Nothing spools: a database away loses these records (readiness says so).
        return LedgerStats(spools=False, records_enqueued=len(self.records))

    async def spend(self, key_id: str, since: datetime | None) -> int:
        return sum(r.cost_nusd for r in self.records
                   if r.key_id == key_id and (since is None or r.ts >= since))


def spool_dir(settings: Settings) -> Path:
    return Path(settings.ledger.spool_dir or Path(settings.data_dir) / "spool")


def create_ledger(settings: Settings) -> Ledger:
    """PostgreSQL when `database_url` is postgresql://, SQLite otherwise."""
    if settings.ledger.store == "memory":
        log.warning("ledger: store = \"memory\": usage records are NOT persisted "
                    "(benchmarks only)")
        return MemoryLedger()
    if is_sqlite(settings.database_url):
        from .sqlite import sqlite_ledger

        return sqlite_ledger(settings.database_url, settings.ledger, spool_dir(settings))
    from .postgres import postgres_ledger

    return postgres_ledger(settings.database_url, settings.ledger, spool_dir(settings))
