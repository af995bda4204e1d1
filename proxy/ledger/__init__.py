"""The usage ledger: every request's record, written behind the request path.

`Ledger` is what the rest of the gateway sees. The request path only calls `enqueue`,
which never waits on a database.
"""

from __future__ import annotations

from typing import Protocol

from .record import UsageRecord


class Ledger(Protocol):
    def enqueue(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks, never raises on a database problem."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush everything queued (SIGTERM path)."""


class MemoryLedger:
    """Keeps records in a list: the placeholder until the SQL ledger is wired in."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def enqueue(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
