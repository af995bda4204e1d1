"""What a spend counter is rebuilt from, and the durable snapshot that keeps it.

A counter that is missing (a fresh Redis, a restart of the embedded gateway, Redis that
lost its data) starts from the largest of: the key's spend snapshot in the keys table,
and the usage ledger's sum for the period. Neither source alone is enough: the ledger
is written behind and may not expose `spend` yet; the snapshot trails by a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from .periods import period_start

log = logging.getLogger("proxy.limits")


class SpendStore(Protocol):
    async def save_spend(self, items: Sequence[tuple[str, str, int]]) -> None: ...

    async def spend_snapshot(self, key_id: str, period: str) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LedgerSpend(Protocol):
    """What limits read of the ledger (`proxy.ledger.Ledger.spend`)."""

    async def spend(self, key_id: str, since: datetime | None) -> int: ...


class SpendSource:
    def __init__(self, store: SpendStore | None,
                 ledger: Callable[[], LedgerSpend | None]) -> None:
        self.store = store
        self.ledger = ledger  # a getter: the ledger object may be replaced after we are built

    async def snapshot(self, key_id: str, period: str) -> int:
        return await self.store.spend_snapshot(key_id, period) if self.store is not None else 0

    async def ledger_spend(self, key_id: str, period: str) -> int | None:
        ledger = self.ledger()
        if ledger is None:  # a limits object built without a ledger: only snapshots
            return None
        return int(await ledger.spend(key_id, period_start(period)))

    async def base(self, key_id: str, period: str) -> int:
        """The counter's starting value: raises when no durable source could be read."""
        snap, ledger = await asyncio.gather(
            self.snapshot(key_id, period), self.ledger_spend(key_id, period)
        )
        return max(snap, ledger or 0)


class SnapshotWriter:
    """Keeps each touched counter's latest value and writes them to the keys table in batches."""

    def __init__(self, store: SpendStore | None) -> None:
        self._store = store
        self._dirty: dict[tuple[str, str], int] = {}
        self.errors = 0

    def touch(self, key_id: str, period: str, settled: int) -> None:
        if self._store is not None:
            key = (key_id, period)
            if settled > self._dirty.get(key, -1):
                self._dirty[key] = settled

    async def flush(self) -> None:
        if self._store is None or not self._dirty:
            return
        items, self._dirty = self._dirty, {}
        try:
            await self._store.save_spend([(k, p, v) for (k, p), v in items.items()])
        except Exception as e:  # noqa: BLE001 - keep the values for the next attempt
            self.errors += 1
            log.warning("limits: could not save spend snapshots (%s)", type(e).__name__)
            for (k, p), v in items.items():
                self.touch(k, p, v)
