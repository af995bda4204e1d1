"""Where keys live: the `api_keys` table in PostgreSQL (here) or SQLite (`sqlite.py`).

The store is shared by the key registry and the spend limits (durable spend snapshots),
which start and close at different moments; it opens on the first `start` and closes on
the last `close`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import asyncpg

from .model import KeyRow

# (key id, period, nano-USD): a spend counter's value to keep as its durable floor.
SpendItem = tuple[str, str, int]


class KeyStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, row: KeyRow) -> KeyRow: ...

    async def get(self, key_id: str) -> KeyRow | None:
        """A live key (not deleted)."""

    async def live_keys(self) -> list[KeyRow]:
        """Every live key, oldest first."""

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        """A live key by its hash."""

    async def delete(self, key_id: str) -> KeyRow | None:
        """Soft-delete; the deleted row, or None when there was no live key."""

    async def update_limit(self, key_id: str, limit_nusd: int | None) -> KeyRow | None: ...

    async def changed_since(self, since: datetime | None) -> list[KeyRow]:
        """Rows (deleted ones too) updated at or after `since`; every live row if None."""

    async def save_spend(self, items: Sequence[SpendItem]) -> None:
        """Raise each key's durable spend floor for the period (never lower it)."""

    async def spend_snapshot(self, key_id: str, period: str) -> int: ...


class SharedStore:
    """Reference-counted open/close."""

    def __init__(self) -> None:
        self._users = 0

    async def start(self) -> None:
        self._users += 1
        if self._users == 1:
            await self._open()

    async def close(self) -> None:
        self._users -= 1
        if self._users == 0:
            await self._shut()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _shut(self) -> None:
        raise NotImplementedError


_COLUMNS: Final = (
    "id, name, key_hash, key_prefix, role, limit_nusd, limit_period, rpm, tpm, labels, owner, "
    "cache, expiry, created_at, updated_at, deleted_at IS NOT NULL AS deleted, spend_period, "
    "spend_nusd"
)


def _row(record: Any) -> KeyRow:
    data = dict(record)
    data["labels"] = tuple(data["labels"] or ())
    return KeyRow(**data)


class PostgresKeyStore(SharedStore):
    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)

    async def _shut(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("key store used before start()")
        return self._pool

    async def _one(self, sql: str, *args: Any) -> KeyRow | None:
        record = await self.pool.fetchrow(sql, *args)
        return _row(record) if record is not None else None

    async def insert(self, row: KeyRow) -> KeyRow:
        inserted = await self._one(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, role, limit_nusd, limit_period,"
            " rpm, tpm, labels, owner, cache, expiry)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            f" RETURNING {_COLUMNS}",
            row.id, row.name, row.key_hash, row.key_prefix, row.role, row.limit_nusd,
            row.limit_period, row.rpm, row.tpm, list(row.labels), row.owner, row.cache,
            row.expiry,
        )
        assert inserted is not None
        return inserted

    async def get(self, key_id: str) -> KeyRow | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1 AND deleted_at IS NULL", key_id
        )

    async def live_keys(self) -> list[KeyRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE deleted_at IS NULL ORDER BY created_at, id"
        )
        return [_row(r) for r in records]

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1 AND deleted_at IS NULL", key_hash
        )

    async def delete(self, key_id: str) -> KeyRow | None:
        return await self._one(
            "UPDATE api_keys SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()"
            f" WHERE id = $1 AND deleted_at IS NULL RETURNING {_COLUMNS}",
            key_id,
        )

    async def update_limit(self, key_id: str, limit_nusd: int | None) -> KeyRow | None:
        return await self._one(
            "UPDATE api_keys SET limit_nusd = $2, updated_at = clock_timestamp()"
            f" WHERE id = $1 AND deleted_at IS NULL RETURNING {_COLUMNS}",
            key_id, limit_nusd,
        )

    async def changed_since(self, since: datetime | None) -> list[KeyRow]:
        if since is None:
            return await self.live_keys()
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE updated_at >= $1 ORDER BY updated_at", since
        )
        return [_row(r) for r in records]

    async def save_spend(self, items: Sequence[SpendItem]) -> None:
        if not items:
            return
        # updated_at is left alone: a spend snapshot is not a key change to refresh.
        await self.pool.executemany(
            "UPDATE api_keys SET spend_nusd = CASE WHEN spend_period = $2"
            " THEN GREATEST(spend_nusd, $3) ELSE $3 END, spend_period = $2"
            " WHERE id = $1 AND (spend_period IS NULL OR spend_period <= $2)",
            list(items),
        )

    async def spend_snapshot(self, key_id: str, period: str) -> int:
        value = await self.pool.fetchval(
            "SELECT spend_nusd FROM api_keys WHERE id = $1 AND spend_period = $2", key_id, period
        )
        return int(value or 0)
