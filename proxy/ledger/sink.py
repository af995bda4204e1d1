"""What the ledger writer writes through: a database sink, one per engine.

PostgreSQL (`postgres.PostgresSink`) and SQLite (`sqlite.SqliteSink`) implement `Sink`;
`RecordError` is how a sink says a batch was refused for its data, as opposed to the
database being away (any other error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .record import UsageRecord


class RecordError(Exception):
    """The database refused a batch because of the data in it (not because it is away)."""


class Sink(Protocol):
    # How many write() calls may run at once (separate connections and transactions).
    concurrency: int

    async def write(self, records: Sequence[UsageRecord]) -> int:
        """Write a batch in one transaction; returns the rows actually inserted (a replayed
        record is not). Raises RecordError for bad data, anything else when unavailable."""

    async def close(self) -> None: ...
