"""Reports are exact: every group_by, resolution and scope, on PostgreSQL and on SQLite,
equals sums computed here from the records themselves, to the nano-USD, including the
partial hours at a window's edges (raw records) and whole days (daily rollup)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledger_support import (
    KEYS,
    create_database,
    drop_database,
    expected,
    known_records,
    record,
)

from proxy.config import LedgerConfig
from proxy.ledger.postgres import postgres_ledger
from proxy.ledger.record import UsageRecord
from proxy.ledger.report import UsageQuery, UsageReport
from proxy.ledger.sqlite import sqlite_ledger
from proxy.ledger.writer import LedgerWriter

BASE = datetime(2024, 3, 30, 22, 17, 3, tzinfo=UTC)  # crosses a month end
GROUPS = ("model", "key", "provider", "status", "user_id", "tag", "extra.team", "extra.env")
RESOLUTIONS = (None, "hour", "day", "month")
# [start, end) windows: both edges mid-hour with whole days between; aligned on hours and
# days; inside a single hour; and the whole data set.
W_EDGES = (datetime(2024, 3, 30, 23, 41, 7, 250_000, tzinfo=UTC),
           datetime(2024, 4, 2, 3, 21, 59, tzinfo=UTC))
WINDOWS = (
    W_EDGES,
    (datetime(2024, 3, 31, 5, tzinfo=UTC), datetime(2024, 4, 2, tzinfo=UTC)),
    (datetime(2024, 4, 1, 10, 5, tzinfo=UTC), datetime(2024, 4, 1, 10, 50, tzinfo=UTC)),
    (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)),
)


def _records() -> list[UsageRecord]:
    records = known_records(BASE)
    start, end = W_EDGES
    edge = timedelta(microseconds=1)
    # On the boundaries: start is in, end is out, the first whole hour is in.
    extra = [start, end, end - edge, start - edge, start.replace(minute=0, second=0,
             microsecond=0) + timedelta(hours=1), datetime(2024, 4, 1, tzinfo=UTC)]
    for i, ts in enumerate(extra):
        records.append(record(90_000 + i, ts, key_id=KEYS[i % len(KEYS)], user_id="edge",
                              tags=["edge"], prompt_tokens=1000 + i, completion_tokens=7))
    return records


RECORDS = _records()


async def _load(ledger: LedgerWriter, records: list[UsageRecord]) -> None:
    await ledger.start()
    for r in records:
        ledger.enqueue(r)
    await ledger.close()
    assert ledger.stats().records_written == len(records)


@pytest.fixture(scope="module")
def pg_ledger_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database loaded once for the module's read-only tests."""
    dsn = asyncio.run(create_database())
    spool = tmp_path_factory.mktemp("spool")
    try:
        asyncio.run(_load(postgres_ledger(dsn, LedgerConfig(flush_rows=200), spool), RECORDS))
        yield dsn
    finally:
        asyncio.run(drop_database(dsn))


@pytest.fixture(scope="module")
def sqlite_ledger_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("sqlite")
    url = f"sqlite:///{d / 'ledger.db'}"
    asyncio.run(_load(sqlite_ledger(url, LedgerConfig(flush_rows=200), d / "spool"), RECORDS))
    return url


@pytest.fixture
async def pg(pg_ledger_db: str, tmp_path: Path) -> AsyncIterator[LedgerWriter]:
    ledger = postgres_ledger(pg_ledger_db, LedgerConfig(), tmp_path / "spool")
    yield ledger
    await ledger.close()


@pytest.fixture
async def lite(sqlite_ledger_db: str, tmp_path: Path) -> AsyncIterator[LedgerWriter]:
    ledger = sqlite_ledger(sqlite_ledger_db, LedgerConfig(), tmp_path / "spool")
    yield ledger
    await ledger.close()


Rows = dict[tuple[object, datetime | None], tuple[int, ...]]


def _as_dict(report: UsageReport) -> Rows:
    out: Rows = {}
    for row in report.rows:
        m = row.measures
        key = (row.group, row.period)
        assert key not in out, f"duplicate row {key}"
        out[key] = (m.requests, m.tokens, m.prompt_tokens, m.completion_tokens, m.cost_nusd,
                    m.cached_requests, m.savings_nusd)
    return out


def _queries(group_by: str) -> Iterator[UsageQuery]:
    for start, end in WINDOWS:
        for resolution in RESOLUTIONS:
            for key_id in (None, "key-b"):
                yield UsageQuery(start, end, group_by, resolution, key_id)


@pytest.mark.parametrize("group_by", GROUPS)
async def test_every_report_equals_the_sum_of_its_records(pg: LedgerWriter, group_by: str
                                                           ) -> None:
    for q in _queries(group_by):
        report = await pg.report(q)
        rows, totals = expected(RECORDS, q.start, q.end, q.group_by, q.resolution, q.key_id)
        assert _as_dict(report) == rows, q
        t = report.totals
        assert (t.requests, t.tokens, t.prompt_tokens, t.completion_tokens, t.cost_nusd,
                t.cached_requests, t.savings_nusd) == totals, q


@pytest.mark.parametrize("group_by", GROUPS)
async def test_sqlite_reports_equal_postgres_reports(pg: LedgerWriter, lite: LedgerWriter,
                                                     group_by: str) -> None:
    for q in _queries(group_by):
        a, b = await pg.report(q), await lite.report(q)
        assert _as_dict(a) == _as_dict(b), q
        assert [(r.group, r.period) for r in a.rows] == [(r.group, r.period) for r in b.rows]
        assert a.totals == b.totals


async def test_window_edges_are_start_inclusive_end_exclusive(pg: LedgerWriter) -> None:
    start, end = W_EDGES
    report = await pg.report(UsageQuery(start, end, "user_id"))
    edge = next(r for r in report.rows if r.group == "edge")
    # start, end - 1 µs, the first whole hour, midnight: in; end, start - 1 µs: out.
    assert edge.measures.requests == 4


async def test_spend_sums_a_keys_cost_since_a_time(pg: LedgerWriter, lite: LedgerWriter
                                                   ) -> None:
    for since in (None, BASE, W_EDGES[0], datetime(2024, 4, 1, tzinfo=UTC),
                  datetime(2030, 1, 1, tzinfo=UTC)):
        for key in (*KEYS, "key-unknown"):
            want = sum(r.cost_nusd for r in RECORDS
                       if r.key_id == key and (since is None or r.ts >= since))
            assert await pg.spend(key, since) == want
            assert await lite.spend(key, since) == want


async def test_a_replayed_batch_adds_nothing(fresh_pg: str, tmp_path: Path) -> None:
    records = known_records(BASE, n=300, seed=3)
    first = postgres_ledger(fresh_pg, LedgerConfig(), tmp_path / "a")
    await _load(first, records)
    again = postgres_ledger(fresh_pg, LedgerConfig(flush_rows=50), tmp_path / "b")
    await again.start()
    for r in records:
        again.enqueue(r)
    await again.close()
    assert (again.stats().records_written, again.stats().records_duplicate) == (0, 300)
    q = UsageQuery(BASE - timedelta(days=1), BASE + timedelta(days=4), "key", "hour")
    rows, totals = expected(records, q.start, q.end, q.group_by, q.resolution, None)
    report = await again.report(q)
    await again.close()  # its report pool
    assert _as_dict(report) == rows
    assert report.totals.cost_nusd == totals[4]
