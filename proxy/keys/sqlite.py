"""The `api_keys` table in SQLite (the embedded default), through a worker thread.

Key management and the refresh backstop are rare, so each call opens its own
connection: no connection is shared across threads, and WAL lets workers read while one
writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec

from .model import KeyRow
from .store import SharedStore, SpendItem

T = TypeVar("T")
_COLUMNS: Final = (
    "id, name, key_hash, key_prefix, role, limit_nusd, limit_period, rpm, tpm, labels, owner, "
    "cache, expiry, created_at, updated_at, deleted_at IS NOT NULL AS deleted, spend_period, "
    "spend_nusd"
)
_labels = msgspec.json.Decoder(tuple[str, ...]).decode


def _ts(value: datetime) -> str:
    """Fixed-width UTC text, so string order is time order."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _now() -> str:
    return _ts(datetime.now(UTC))


def _row(r: sqlite3.Row) -> KeyRow:
    created, updated = _dt(r["created_at"]), _dt(r["updated_at"])
    assert created is not None and updated is not None
    return KeyRow(
        id=r["id"], name=r["name"], key_hash=r["key_hash"], key_prefix=r["key_prefix"],
        role=r["role"], limit_nusd=r["limit_nusd"], limit_period=r["limit_period"],
        rpm=r["rpm"], tpm=r["tpm"], labels=_labels(r["labels"]), owner=r["owner"],
        cache=bool(r["cache"]), expiry=_dt(r["expiry"]),
        created_at=created, updated_at=updated, deleted=bool(r["deleted"]),
        spend_period=r["spend_period"], spend_nusd=r["spend_nusd"],
    )


class SqliteKeyStore(SharedStore):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    async def _open(self) -> None:
        pass

    async def _shut(self) -> None:
        pass

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            return fn(conn)
        finally:
            conn.close()

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, fn)

    async def _one(self, sql: str, *args: Any) -> KeyRow | None:
        def go(conn: sqlite3.Connection) -> KeyRow | None:
            r = conn.execute(sql, args).fetchone()
            return _row(r) if r is not None else None

        return await self._call(go)

    async def _many(self, sql: str, *args: Any) -> list[KeyRow]:
        return await self._call(lambda conn: [_row(r) for r in conn.execute(sql, args)])

    async def insert(self, row: KeyRow) -> KeyRow:
        now = _now()
        await self._call(lambda conn: conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, role, limit_nusd, limit_period,"
            " rpm, tpm, labels, owner, cache, expiry, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.name, row.key_hash, row.key_prefix, row.role, row.limit_nusd,
             row.limit_period, row.rpm, row.tpm, msgspec.json.encode(row.labels).decode(),
             row.owner, int(row.cache), _ts(row.expiry) if row.expiry else None, now, now),
        ))
        inserted = await self.get(row.id)
        assert inserted is not None
        return inserted

    async def get(self, key_id: str) -> KeyRow | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? AND deleted_at IS NULL", key_id
        )

    async def live_keys(self) -> list[KeyRow]:
        return await self._many(
            f"SELECT {_COLUMNS} FROM api_keys WHERE deleted_at IS NULL ORDER BY created_at, id"
        )

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ? AND deleted_at IS NULL", key_hash
        )

    async def _update(self, key_id: str, assignments: str, *args: Any) -> KeyRow | None:
        now = _now()

        def go(conn: sqlite3.Connection) -> KeyRow | None:
            cur = conn.execute(
                f"UPDATE api_keys SET {assignments}, updated_at = ?"
                " WHERE id = ? AND deleted_at IS NULL",
                (*args, now, key_id),
            )
            if cur.rowcount == 0:
                return None
            r = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return _row(r)

        return await self._call(go)

    async def delete(self, key_id: str) -> KeyRow | None:
        return await self._update(key_id, "deleted_at = ?", _now())

    async def update_limit(self, key_id: str, limit_nusd: int | None) -> KeyRow | None:
        return await self._update(key_id, "limit_nusd = ?", limit_nusd)

    async def changed_since(self, since: datetime | None) -> list[KeyRow]:
        if since is None:
            return await self.live_keys()
        return await self._many(
            f"SELECT {_COLUMNS} FROM api_keys WHERE updated_at >= ? ORDER BY updated_at", _ts(since)
        )

    async def save_spend(self, items: Sequence[SpendItem]) -> None:
        if not items:
            return
        await self._call(lambda conn: conn.executemany(
            "UPDATE api_keys SET spend_nusd = CASE WHEN spend_period = ?2"
            " THEN MAX(spend_nusd, ?3) ELSE ?3 END, spend_period = ?2"
            " WHERE id = ?1 AND (spend_period IS NULL OR spend_period <= ?2)",
            list(items),
        ))

    async def spend_snapshot(self, key_id: str, period: str) -> int:
        def go(conn: sqlite3.Connection) -> int:
            r = conn.execute(
                "SELECT spend_nusd FROM api_keys WHERE id = ? AND spend_period = ?",
                (key_id, period),
            ).fetchone()
            return int(r[0]) if r else 0

        return await self._call(go)
