"""The in-process cache of every live key, kept current, and the writes that change it.

Reads on the request path (`cached`) are a dict lookup; a miss reaches the database only
for a key the gateway could have made (`auth.KeyTags`), and not for a deleted key (its
hash is kept) nor one looked up in vain in the last second. Three things keep the cache
current: a management call updates it directly and publishes the row on Redis pub/sub
(`events.py`) for the other workers and instances; a periodic refresh reads the rows
changed since the last pass (every second while pub/sub is down, every few seconds as a
backstop while it is up); and expiry is checked at use by `Authenticator`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Final

import msgspec

from ..errors import ServiceUnavailable
from ..principal import Principal
from .events import KeyEvents
from .model import KeyRow, decode_row, encode_row
from .store import KeyStore

log = logging.getLogger("proxy.keys")

REFRESH_S: Final = 5.0  # backstop while pub/sub is connected
REFRESH_UNSUBSCRIBED_S: Final = 1.0  # the only path while it is not: keeps the 1 s promise
# Rows are read from a little before the last one seen: a transaction that stamped its
# row earlier but committed later than the previous pass is still picked up.
_OVERLAP: Final = timedelta(seconds=5)
_NEGATIVE_MAX: Final = 10_000
_NEGATIVE_TTL_S: Final = 1.0
_CLOSE_WAIT_S: Final = 5.0


class KeyRegistry:
    def __init__(
        self,
        store: KeyStore,
        events: KeyEvents | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.store = store
        self.events = events
        self.refresh_s = refresh_s
        self._rows: dict[str, KeyRow] = {}  # by id, deleted rows kept as tombstones
        self._by_hash: dict[str, Principal] = {}
        self._deleted: set[str] = set()  # hashes of deleted keys: refused without a lookup
        self._cursor: datetime | None = None
        # Recent misses, so a client retrying a wrong key does not query the database
        # on every attempt; short-lived, as the key might have just been created.
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.database_errors = 0  # for metrics

    # --- the request path ---------------------------------------------------------------

    def cached(self, key_hash: str) -> Principal | None:
        return self._by_hash.get(key_hash)

    async def lookup(self, key_hash: str) -> Principal | None:
        """The miss path: a database read, remembered briefly when it finds nothing."""
        if key_hash in self._deleted:
            return None
        now = time.monotonic()
        seen = self._negative.get(key_hash)
        if seen is not None and now - seen < _NEGATIVE_TTL_S:
            return None
        try:
            row = await self.store.by_hash(key_hash)
        except Exception as e:  # noqa: BLE001 - cached keys keep working; this one must wait
            self.database_errors += 1
            log.warning("keys: lookup of an uncached key failed (%s)", type(e).__name__)
            raise ServiceUnavailable(
                "The key could not be checked right now; try again.", code="auth_unavailable",
                headers={"retry-after": "1"},
            ) from None
        if row is None:
            self._negative[key_hash] = now
            self._negative.move_to_end(key_hash)
            while len(self._negative) > _NEGATIVE_MAX:
                self._negative.popitem(last=False)
            return None
        self.apply(row)
        return self._by_hash.get(key_hash)

    def key_ids(self) -> list[str]:
        return [kid for kid, row in self._rows.items() if not row.deleted]

    def row(self, key_id: str) -> KeyRow | None:
        row = self._rows.get(key_id)
        return row if row is not None and not row.deleted else None

    # --- keeping the cache current -------------------------------------------------------

    def apply(self, row: KeyRow) -> None:
        """Take a row from any source; an older version never overwrites a newer one."""
        current = self._rows.get(row.id)
        if current is not None:
            if current.updated_at > row.updated_at or current == row:
                return  # older, or what is held already (each refresh re-reads its overlap)
            self._by_hash.pop(current.key_hash, None)
        self._rows[row.id] = row
        if row.deleted:
            self._deleted.add(row.key_hash)
        else:
            self._by_hash[row.key_hash] = row.principal()
            # A key known now must not stay refused by an earlier miss (this worker's
            # create, or another's pub/sub message).
            self._negative.pop(row.key_hash, None)
        if self._cursor is None or row.updated_at > self._cursor:
            self._cursor = row.updated_at

    def _on_message(self, data: bytes) -> None:
        try:
            self.apply(decode_row(data))
        except msgspec.DecodeError:
            log.warning("keys: ignored a malformed key-change message")

    async def refresh(self) -> None:
        since = self._cursor - _OVERLAP if self._cursor is not None else None
        for row in await self.store.changed_since(since):
            self.apply(row)

    async def _refresh_loop(self) -> None:
        while True:
            connected = self.events is not None and self.events.connected
            await asyncio.sleep(self.refresh_s if connected else REFRESH_UNSUBSCRIBED_S)
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - a database blip must not end the loop
                self.database_errors += 1
                log.warning("keys: refresh failed (%s); keeping the cached keys", type(e).__name__)

    async def start(self) -> None:
        await self.store.start()
        for row in await self.store.live_keys():
            self.apply(row)
        self._tasks.append(asyncio.create_task(self._refresh_loop()))
        if self.events is not None:
            self._tasks.append(asyncio.create_task(
                self.events.listen(self._on_message, self.refresh)
            ))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.events is not None:
            await self.events.close()  # ends the listener even if its cancellation got lost
        if self._tasks:
            done, stuck = await asyncio.wait(self._tasks, timeout=_CLOSE_WAIT_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("keys: a background task failed (%r)", task.exception())
            if stuck:
                log.warning("keys: %d background task(s) did not stop; closing anyway",
                            len(stuck))
        self._tasks.clear()
        await self.store.close()

    # --- management: write through, then tell everyone ------------------------------------

    async def _changed(self, row: KeyRow) -> KeyRow:
        self.apply(row)
        if self.events is not None:
            await self.events.publish(encode_row(row))
        return row

    async def create(self, row: KeyRow) -> KeyRow:
        return await self._changed(await self.store.insert(row))

    async def delete(self, key_id: str) -> bool:
        row = await self.store.delete(key_id)
        if row is None:
            return False
        await self._changed(row)
        return True

    async def set_limit(self, key_id: str, limit_nusd: int | None) -> KeyRow | None:
        row = await self.store.update_limit(key_id, limit_nusd)
        return await self._changed(row) if row is not None else None
