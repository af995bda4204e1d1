"""What the ledger writer is handed by an engine: a sink to write through, a reader to
report from.

PostgreSQL (`postgres.PostgresSink`, `postgres.PostgresReader`) and SQLite
(`sqlite.SqliteSink`, `sqlite.SqliteReader`) implement them; `RecordError` is how a sink
says a batch was refused for its data, as opposed to the database being away (any other
error).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from .record import UsageRecord
from .report import UsageQuery, UsageReport


class RecordError(Exception):
    """The database refused a batch because of the data in it (not because it is away)."""


class Sink(Protocol):
    # How many write() calls may run at once (separate connections and transactions).
    @property
    def concurrency(self) -> int: ...

    async def prepare(self) -> None:
        """At start: apply migrations (a database away may be tolerated: writes retry)."""

    async def write(self, records: Sequence[UsageRecord]) -> int:
        """Write a batch in one transaction; returns the rows actually inserted (a replayed
        record is not). Raises RecordError for bad data, anything else when unavailable."""

    async def close(self) -> None: ...


class Reader(Protocol):
    async def report(self, query: UsageQuery) -> UsageReport:
        """A usage report; totals equal the sum of the records, to the nano-USD."""

    async def spend(self, key_id: str, since: datetime | None) -> int:
        """nano-USD spent by a key since a time (None: ever)."""

    async def close(self) -> None: ...
