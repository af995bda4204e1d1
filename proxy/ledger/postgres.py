"""The ledger on PostgreSQL: batches by COPY into a staging table, then one statement
inserts the new records (`ON CONFLICT (request_id) DO NOTHING`) and upserts every rollup
from the rows it actually inserted (`RETURNING`), all in one transaction. A replayed batch
therefore inserts nothing and adds nothing to the rollups.

`PostgresSink` is what the writer (`writer.LedgerWriter`) writes through: a connection per
lane, replaced after any failure (asyncpg does not bring a connection back after a server
restart); the writer's backoff paces the reconnects. `PostgresReader` answers reports from
a small pool of its own, so a long report never delays a flush. `postgres_ledger` hands
both to a writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar, Unpack

import asyncpg

from ..config import LedgerConfig
from ..errors import ServiceUnavailable
from ..migrate import migrate
from . import report_sql
from .record import UsageRecord
from .report import Measures, UsageQuery, UsageReport, UsageRow, assemble
from .schema import COLUMNS, POSTGRES, ROLLUP_INPUTS, pg_row, upserts
from .sink import RecordError
from .writer import LedgerWriter, WriterOptions

log = logging.getLogger("proxy.ledger")

# Sessions run in UTC so that date_trunc() cuts UTC hours, days and months; JIT compiling
# costs more than these short queries take.
SERVER_SETTINGS: Final = {"timezone": "UTC", "jit": "off", "application_name": "proxy-ledger"}
# The flush statement keeps the inserted rows of a batch (up to 10,000) in memory for the
# rollups to read: at the default 4MB it spills them to a temporary file.
WRITER_SETTINGS: Final = {**SERVER_SETTINGS, "work_mem": "32MB"}
# A report over a year by key and day groups a few hundred thousand rows: let it hash them in
# memory rather than spill to disk (at most four report connections).
REPORT_SETTINGS: Final = {**SERVER_SETTINGS, "work_mem": "64MB",
                          "application_name": "proxy-ledger-reports"}
STAGING: Final = "ledger_staging"
# SQLSTATE classes about the data itself: data exception, integrity constraint violation,
# program limit exceeded (a value too large). Anything else means "not now", not "never".
_DATA_CLASSES: Final = ("22", "23", "54")

# Rows are built (`pg_row`, 1.5-3 µs each) and encoded by COPY (asyncpg, 5-8 µs each) on
# the event loop: a batch of 2,000 held it for 6-12 ms, every request waiting behind. Both
# happen in slices of this many rows with a loop turn between them: the longest turn is then
# 0.7-1.3 ms (loadtest/bench_copy_slices.py).
COPY_SLICE: Final = 64

_CREATE_STAGING: Final = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE usage_records) ON COMMIT DELETE ROWS"
)


def _flush_sql() -> str:
    cols = ", ".join(COLUMNS)
    ctes = [
        (f"ins AS (INSERT INTO usage_records ({cols}) SELECT {cols} FROM {STAGING} "
         f"ON CONFLICT (request_id) DO NOTHING RETURNING {', '.join(ROLLUP_INPUTS)})")
    ]
    ctes += [f"u{i} AS ({sql})" for i, sql in enumerate(upserts(POSTGRES, "ins"))]
    return f"WITH {', '.join(ctes)} SELECT count(*) FROM ins"


FLUSH_SQL: Final = _flush_sql()


def is_data_error(e: BaseException) -> bool:
    if isinstance(e, asyncpg.PostgresError):
        return str(e.sqlstate or "")[:2] in _DATA_CLASSES
    # Raised by asyncpg while encoding a value client-side: out of range, wrong type,
    # a lone surrogate in a string.
    return isinstance(e, (TypeError, ValueError, OverflowError))


T = TypeVar("T")


async def in_slices(items: Sequence[T]) -> AsyncIterator[T]:
    """The items, with a turn of the event loop after every `COPY_SLICE` of them."""
    for i in range(0, len(items), COPY_SLICE):
        if i:
            await asyncio.sleep(0)
        for item in items[i:i + COPY_SLICE]:
            yield item


class _Lane:
    """One writer connection with its own staging table."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: asyncpg.Connection[Any] | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class PostgresSink:
    """Writes batches on up to `concurrency` connections of its own. A connection that
    failed in any way is thrown away, never reused; the next write opens a new one."""

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0, concurrency: int = 2) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self.concurrency = concurrency
        self._lanes: asyncio.LifoQueue[_Lane] = asyncio.LifoQueue()
        self._all = [_Lane() for _ in range(concurrency)]
        for lane in self._all:
            self._lanes.put_nowait(lane)

    async def prepare(self) -> None:
        try:
            await migrate(self._dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            # Not fatal: records spool until the database is back (a reconnect migrates).
            log.warning("ledger: cannot migrate %s at start (%s); will retry",
                        "the database", type(e).__name__)

    async def _connection(self, lane: _Lane) -> asyncpg.Connection[Any]:
        if lane.conn is not None and not lane.conn.is_closed():
            return lane.conn
        lane.drop()
        # Migrate after every reconnect: the database may have been away at start, or
        # dropped and recreated while we ran (the check costs one round trip).
        await migrate(self._dsn)
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout,
                                     server_settings=WRITER_SETTINGS)
        try:
            await conn.execute(_CREATE_STAGING)
        except BaseException:
            conn.terminate()
            raise
        lane.conn = conn
        return conn

    async def write(self, records: Sequence[UsageRecord]) -> int:
        try:
            rows = [pg_row(r) async for r in in_slices(records)]
        except (TypeError, ValueError, OverflowError) as e:
            raise RecordError(str(e)) from e
        lane = await self._lanes.get()
        try:
            conn = await self._connection(lane)
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(STAGING, records=in_slices(rows),
                                                     columns=COLUMNS)
                    inserted = await conn.fetchval(FLUSH_SQL)
            except BaseException as e:
                if isinstance(e, Exception) and is_data_error(e) and not conn.is_closed():
                    raise RecordError(f"{type(e).__name__}: {e}") from e
                lane.drop()  # a broken or cancelled connection is never reused
                raise
            return int(inserted)
        finally:
            self._lanes.put_nowait(lane)

    async def close(self) -> None:
        for lane in self._all:
            if lane.conn is not None:
                try:
                    await lane.conn.close(timeout=2)
                except Exception:  # noqa: BLE001 - closing a dead connection
                    lane.conn.terminate()
                lane.conn = None


def postgres_ledger(dsn: str, config: LedgerConfig, spool_dir: Path,
                    **options: Unpack[WriterOptions]) -> LedgerWriter:
    """The ledger on PostgreSQL: a writer through `PostgresSink`, reports from its pool."""
    return LedgerWriter(PostgresSink(dsn), PostgresReader(dsn), config, spool_dir, **options)


class PostgresReader:
    """Reports and spend, on a small pool of their own."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool[Any] | None = None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetch(self, statement: report_sql.Statement) -> list[asyncpg.Record]:
        assert isinstance(statement.params, list)
        for attempt in range(2):
            try:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=0, max_size=4, timeout=5, command_timeout=30,
                        server_settings=REPORT_SETTINGS,
                    )
                rows: list[asyncpg.Record] = await self._pool.fetch(
                    statement.sql, *statement.params)
                return rows
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                    asyncpg.CannotConnectNowError, TimeoutError) as e:
                # A pooled connection that died with a server restart fails once; retry.
                log.warning("ledger: report query failed (%s)", type(e).__name__)
                if attempt:
                    raise _unavailable() from None
            except asyncpg.PostgresError as e:
                # Reachable but not usable (say, recreated and not migrated yet).
                log.error("ledger: report query failed: %s: %s", type(e).__name__, e)
                raise _unavailable() from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def report(self, query: UsageQuery) -> UsageReport:
        grouped = [_row(r) for r in await self._fetch(report_sql.report(POSTGRES, query))]
        if not query.by_dimension:
            return assemble(query, grouped)
        base = await self._fetch(report_sql.report(POSTGRES, query, grouped=False))
        return assemble(query, grouped, [_row(r) for r in base])

    async def spend(self, key_id: str, since: datetime | None) -> int:
        rows = await self._fetch(report_sql.spend(POSTGRES, key_id, since))
        return sum(int(v or 0) for v in rows[0])


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The usage database is unreachable; try again shortly.")


def _row(r: asyncpg.Record) -> UsageRow:
    return UsageRow(r[0], r[1], Measures.of(r[2:]))
