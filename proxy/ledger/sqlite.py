"""The ledger on SQLite, the embedded default: same records, same rollups, same reports.

sqlite3 blocks, so every database call runs in a thread (`asyncio.to_thread`). One flush
is one `BEGIN IMMEDIATE` transaction: the batch goes into a temporary staging table, rows
whose request id is already recorded (or repeated in the batch) are removed from it, the
rest are inserted and folded into the rollups by the same upserts PostgreSQL runs. WAL mode
lets reports read while a flush writes; workers sharing the file take turns on its write
lock (busy timeout).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Unpack

from ..config import LedgerConfig
from ..migrate import migrate, sqlite_path
from . import report_sql
from .record import UsageRecord
from .report import Measures, UsageQuery, UsageReport, UsageRow, assemble
from .schema import COLUMNS, SQLITE, from_micros, sqlite_row, upserts
from .sink import RecordError
from .writer import LedgerWriter, WriterOptions

STAGING: Final = "temp.ledger_staging"
_COLS: Final = ", ".join(COLUMNS)
_INSERT_STAGING: Final = (
    f"INSERT INTO {STAGING} ({_COLS}) VALUES ({', '.join('?' for _ in COLUMNS)})"
)
# Already recorded (a replay), or a repeat within the batch (the first one wins).
_DEDUPE: Final = (
    f"DELETE FROM {STAGING} WHERE EXISTS (SELECT 1 FROM main.usage_records AS u "
    f"WHERE u.request_id = ledger_staging.request_id) OR rowid NOT IN "
    f"(SELECT min(rowid) FROM {STAGING} GROUP BY request_id)"
)
_INSERT: Final = f"INSERT INTO main.usage_records ({_COLS}) SELECT {_COLS} FROM {STAGING}"
_UPSERTS: Final = upserts(SQLITE, STAGING)
_BUSY_MS: Final = 10_000


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it safe
    return conn


class SqliteSink:
    concurrency = 1  # SQLite has one writer at a time anyway

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._path = sqlite_path(database_url)
        self._conn: sqlite3.Connection | None = None

    async def prepare(self) -> None:
        await migrate(self._url)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = _connect(self._path)
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS ledger_staging AS "
                         f"SELECT {_COLS} FROM main.usage_records WHERE 0")
            self._conn = conn
        return self._conn

    async def write(self, records: Sequence[UsageRecord]) -> int:
        try:
            rows = [sqlite_row(r) for r in records]
        except (TypeError, ValueError, OverflowError) as e:  # a lone surrogate, say
            raise RecordError(f"{type(e).__name__}: {e}") from e
        return await asyncio.to_thread(self._write, rows)

    def _write(self, rows: list[tuple[object, ...]]) -> int:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_STAGING, rows)
            conn.execute(_DEDUPE)
            inserted = conn.execute(_INSERT).rowcount
            for sql in _UPSERTS:
                conn.execute(sql)
            conn.execute(f"DELETE FROM {STAGING}")
            conn.execute("COMMIT")
            return inserted
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, TypeError,
                ValueError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as e:
            self._rollback()
            raise RecordError(f"{type(e).__name__}: {e}") from e
        except BaseException:
            self._rollback()
            self._close()  # locked, I/O error, file replaced: start over with a new handle
            raise

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover
                self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


def sqlite_ledger(database_url: str, config: LedgerConfig, spool_dir: Path,
                  **options: Unpack[WriterOptions]) -> LedgerWriter:
    """The ledger on SQLite: a writer through `SqliteSink`, reports on fresh connections."""
    return LedgerWriter(SqliteSink(database_url), SqliteReader(database_url), config,
                        spool_dir, **options)


class SqliteReader:
    """Reports and spend, each on a connection of its own in a thread (WAL: never blocked
    by a flush)."""

    def __init__(self, database_url: str) -> None:
        self._path = sqlite_path(database_url)

    async def close(self) -> None:
        pass

    def _fetch(self, statement: report_sql.Statement) -> list[tuple[Any, ...]]:
        conn = _connect(self._path)
        try:
            return conn.execute(statement.sql, statement.params).fetchall()
        finally:
            conn.close()

    async def report(self, query: UsageQuery) -> UsageReport:
        grouped = await asyncio.to_thread(self._fetch, report_sql.report(SQLITE, query))
        if not query.by_dimension:
            return assemble(query, map(_row, grouped))
        base = await asyncio.to_thread(self._fetch,
                                       report_sql.report(SQLITE, query, grouped=False))
        return assemble(query, map(_row, grouped), map(_row, base))

    async def spend(self, key_id: str, since: datetime | None) -> int:
        rows = await asyncio.to_thread(self._fetch, report_sql.spend(SQLITE, key_id, since))
        return sum(int(v or 0) for v in rows[0])


def _row(r: tuple[Any, ...]) -> UsageRow:
    period = from_micros(r[1]) if r[1] is not None else None
    return UsageRow(r[0], period, Measures.of(r[2:]))
