"""The writer loses nothing and counts nothing twice: database outages, a dropped database,
poisoned records, the queue limit, close(), and a worker killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from ledger_support import (
    TcpProxy,
    count_records,
    create_database,
    drop_database,
    expected,
    known_records,
    wait_for,
)

from proxy.config import LedgerConfig, LimitsConfig
from proxy.ledger import intake
from proxy.ledger.inflight import AdmissionJournal, Admitted
from proxy.ledger.inflight_recovery import recover
from proxy.ledger.journal import Journal
from proxy.ledger.postgres import COPY_SLICE, PostgresSink, in_slices, postgres_ledger
from proxy.ledger.record import UsageRecord
from proxy.ledger.report import UsageQuery
from proxy.ledger.sqlite import sqlite_ledger
from proxy.ledger.writer import LedgerWriter, WriterOptions
from proxy.limits.durable import SpendSource
from proxy.limits.memory import MemoryLimits
from proxy.migrate import migrate

BASE = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
FAST: WriterOptions = {"backoff_s": (0.02, 0.1), "write_timeout_s": 5.0}
TESTS = Path(__file__).resolve().parent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("ledger-*.jsonl")) if directory.exists() else []


def make(engine: str, pg: str, tmp: Path, spool: Path, **config: Any) -> LedgerWriter:
    cfg = LedgerConfig(**config)
    if engine == "postgres":
        return postgres_ledger(pg, cfg, spool, **FAST)
    return sqlite_ledger(f"sqlite:///{tmp / 'ledger.db'}", cfg, spool, **FAST)


async def stored(engine: str, pg: str, tmp: Path) -> tuple[int, int, int]:
    """(rows, distinct request ids, requests in the hourly rollup)."""
    if engine == "postgres":
        return await count_records(pg)
    import sqlite3

    conn = sqlite3.connect(tmp / "ledger.db")
    try:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM usage_records), "
            "(SELECT count(DISTINCT request_id) FROM usage_records), "
            "(SELECT coalesce(sum(requests), 0) FROM usage_hourly)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        conn.close()


async def test_database_outage_loses_and_duplicates_nothing(fresh_pg: str, tmp_path: Path
                                                            ) -> None:
    await migrate(fresh_pg)
    proxy = TcpProxy()
    await proxy.restore()
    dsn = fresh_pg.replace("127.0.0.1:5432", proxy.dsn_host)
    spool = tmp_path / "spool"
    ledger = postgres_ledger(dsn, LedgerConfig(flush_rows=100, flush_interval_ms=20), spool,
                            **FAST)
    await ledger.start()
    records = known_records(BASE, n=3000)
    for r in records[:1000]:
        ledger.enqueue(r)
    await wait_for(lambda: ledger.stats().records_written == 1000)

    await proxy.cut()  # the database goes away, mid-stream
    for i in range(1000, 2000, 100):
        for r in records[i : i + 100]:
            ledger.enqueue(r)
        await asyncio.sleep(0.03)  # several flush and retry cycles while it is away
    await wait_for(lambda: not ledger.stats().database_up
                   and ledger.stats().records_spooled >= 1000)
    assert spool_files(spool)
    assert ledger.stats().queue_depth == 0  # while it is away, records live on disk only

    await proxy.restore()
    for r in records[2000:]:
        ledger.enqueue(r)
    await wait_for(lambda: ledger.stats().records_written
                   + ledger.stats().records_duplicate >= 3000)
    assert ledger.stats().records_replayed >= 1000
    await ledger.close()
    await proxy.cut()

    assert await count_records(fresh_pg) == (3000, 3000, 3000)
    assert spool_files(spool) == []
    reader = postgres_ledger(fresh_pg, LedgerConfig(), spool)
    q = UsageQuery(BASE, BASE + timedelta(days=4), "model", "day")
    report = await reader.report(q)
    await reader.close()
    _, totals = expected(records, q.start, q.end, q.group_by, q.resolution, None)
    assert (report.totals.requests, report.totals.cost_nusd) == (totals[0], totals[4])


async def test_a_dropped_and_recreated_database_is_migrated_and_written_again(
        tmp_path: Path) -> None:
    dsn = await create_database()
    try:
        ledger = postgres_ledger(dsn, LedgerConfig(flush_rows=50, flush_interval_ms=20),
                                tmp_path / "spool", **FAST)
        await ledger.start()
        records = known_records(BASE, n=400)
        for r in records[:200]:
            ledger.enqueue(r)
        await wait_for(lambda: ledger.stats().records_written == 200)
        await drop_database(dsn)
        for r in records[200:]:
            ledger.enqueue(r)
        await wait_for(lambda: not ledger.stats().database_up)
        conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
        await conn.execute(f'CREATE DATABASE "{dsn.rsplit("/", 1)[1]}"')
        await conn.close()
        await wait_for(lambda: ledger.stats().records_written == 400)
        await ledger.close()
        # What was written before the drop went with the database; the rest all landed.
        assert await count_records(dsn) == (200, 200, 200)
    finally:
        await drop_database(dsn)


@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
async def test_a_refused_record_lands_with_a_marker_and_only_an_unwritable_one_is_quarantined(
        engine: str, fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = make(engine, fresh_pg, tmp_path, spool, flush_rows=10_000, flush_interval_ms=50)
    await ledger.start()
    records = known_records(BASE, n=300)
    salvaged = [150]
    records[150].prompt_tokens = 2**70  # out of any integer column's range
    records[17].key_id = None  # type: ignore[assignment]  # NOT NULL: no marker makes it writable
    if engine == "postgres":
        records[250].user_id = "nul\x00byte"  # PostgreSQL text cannot hold NUL
        salvaged.append(250)
    for r in records:
        ledger.enqueue(r)
    await wait_for(lambda: ledger.stats().records_written
                   + ledger.stats().records_quarantined == 300)
    await ledger.close()
    counts = ledger.stats()
    assert (counts.records_quarantined, counts.records_salvaged) == (1, len(salvaged))
    assert await stored(engine, fresh_pg, tmp_path) == (299,) * 3
    lines = [json.loads(line) for f in spool.glob("quarantine-*.jsonl")
             for line in f.read_text().splitlines()]
    assert {x["record"]["request_id"]: x["salvaged"] for x in lines} == {
        records[17].request_id: False, **{records[i].request_id: True for i in salvaged}}
    assert all(x["reason"] for x in lines)


async def test_past_the_queue_limit_records_go_to_the_spool_not_memory(
        fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = make("postgres", fresh_pg, tmp_path, spool, flush_rows=100_000,
                  flush_interval_ms=60_000, queue_limit=100)
    await ledger.start()
    for r in known_records(BASE, n=1000):
        ledger.enqueue(r)
        assert ledger.stats().queue_depth <= 100
    assert ledger.stats().records_spooled == 1000  # the segment went to disk whole at the limit
    await asyncio.sleep(0)  # the journal is written at the end of the loop iteration
    await asyncio.sleep(0)
    assert sum(len(f.read_bytes().splitlines()) for f in spool_files(spool)) == 1000
    await ledger.close()
    assert await count_records(fresh_pg) == (1000, 1000, 1000)
    assert spool_files(spool) == []


def break_spool(spool: Path) -> None:
    """The spool directory turns into a plain file: creating a segment in it fails with
    ENOTDIR, as it would with ENOSPC or EMFILE."""
    for f in spool.iterdir():
        f.unlink()
    spool.rmdir()
    spool.write_bytes(b"")


async def test_records_whose_segment_file_cannot_be_created_still_reach_the_database(
        fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = make("postgres", fresh_pg, tmp_path, spool, flush_rows=100_000,
                  flush_interval_ms=60_000, queue_limit=10)
    await ledger.start()
    break_spool(spool)
    for r in known_records(BASE, n=50):  # past the queue limit: no file to spool them to
        ledger.enqueue(r)
    assert ledger.stats().queue_depth == 50 and ledger.stats().records_spooled == 0
    await ledger.close()
    assert await count_records(fresh_pg) == (50, 50, 50)


async def thirty_records_without_a_file(tmp_path: Path) -> tuple[LedgerWriter, Path]:
    """A writer whose database is away, holding 30 records whose segment got no file."""
    spool = tmp_path / "spool"
    away = f"postgresql://127.0.0.1:{closed_port()}/ledger"
    ledger = make("postgres", away, tmp_path, spool, flush_rows=100_000,
                  flush_interval_ms=60_000)
    await ledger.start()
    break_spool(spool)
    for r in known_records(BASE, n=30):
        ledger.enqueue(r)
    return ledger, spool


async def test_records_held_in_memory_go_to_disk_at_close_when_the_database_is_away(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger, spool = await thirty_records_without_a_file(tmp_path)
    spool.unlink()  # the disk is back before the worker stops
    await ledger.close()
    assert spooled_ids(spool) == sorted(r.request_id for r in known_records(BASE, n=30))
    assert "they are lost" not in caplog.text


async def test_records_that_reach_neither_the_database_nor_the_disk_are_reported_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger, _ = await thirty_records_without_a_file(tmp_path)
    await ledger.close()
    assert "30 record(s) reached neither the database nor the disk" in caplog.text


async def test_a_segment_without_a_file_gets_one_with_all_its_records_when_the_disk_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake, "FILE_RETRY_S", 0.0)  # ask again at the next record
    ledger, spool = await thirty_records_without_a_file(tmp_path)
    spool.unlink()  # the disk is back
    late = known_records(BASE + timedelta(days=1), n=1)
    ledger.enqueue(late[0])
    await asyncio.sleep(0)  # the journal is written at the end of the loop iteration
    assert spooled_ids(spool) == sorted(r.request_id for r in known_records(BASE, n=30) + late)
    await ledger.close()  # the database still away: the file stays for the next start
    assert len(spooled_ids(spool)) == 31


async def test_a_write_the_disk_refuses_leaves_the_records_in_memory_not_half_on_disk(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    away = f"postgresql://127.0.0.1:{closed_port()}/ledger"
    ledger = make("postgres", away, tmp_path, spool, flush_rows=100_000,
                  flush_interval_ms=60_000)
    await ledger.start()
    records = known_records(BASE, n=40)
    for r in records[:20]:
        ledger.enqueue(r)
    await asyncio.sleep(0)
    (segment,) = spool_files(spool)
    full = os.open("/dev/full", os.O_WRONLY)  # every write to it fails with ENOSPC
    os.dup2(full, open_fd(segment))  # the disk is full from now on, for that file
    os.close(full)
    for r in records[20:]:
        ledger.enqueue(r)
    await asyncio.sleep(0)
    assert ledger.stats().journal_errors >= 1
    assert spool_files(spool) == []  # the file that missed lines is gone: memory has all 40
    await ledger.close()  # the database away: they go to a file of their own
    assert spooled_ids(spool) == sorted(r.request_id for r in records)


def spooled_ids(spool: Path) -> list[str]:
    return sorted(json.loads(line)["request_id"]
                  for f in spool_files(spool) for line in f.read_bytes().splitlines())


def open_fd(path: Path) -> int:
    """This process's file descriptor open on `path`."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
    raise AssertionError(f"{path} is not open")


async def test_a_dead_workers_own_record_wins_over_the_one_a_live_sibling_recovers(
        fresh_pg: str, tmp_path: Path) -> None:
    """A worker handed a request's record to its ledger and died before its admission
    journal said so. A live sibling's scan recovers the admission (a `worker_lost` record at
    the prompt's estimate) after its own start-up claim of spool files: the dead worker's
    record must still be the one the database keeps."""
    spool = tmp_path / "spool"
    live = make("postgres", fresh_pg, tmp_path, spool, flush_rows=100_000,
                flush_interval_ms=60_000)
    await live.start()
    real = known_records(BASE, n=1)[0]
    real.status, real.error_code = 200, None
    dead = Journal(spool)  # the dead worker's ledger: its segment, its lock gone with it
    segment = dead.open_segment(in_memory=False)
    dead.append(segment, msgspec.json.encode(real) + b"\n")
    dead.release(segment)
    admissions = AdmissionJournal(tmp_path / "inflight", 900.0)
    admissions.open()
    admissions.admitted(Admitted(
        1, real.request_id, real.ts, real.key_id, real.model, real.model, real.provider,
        "global", False, real.prompt_tokens, "r:dead:1", 0, "2024-06", 0, 0, False))
    admissions.close()  # an admission left open: the file stays, unlocked, as a dead one's
    limits = MemoryLimits(LimitsConfig(), SpendSource(None, lambda: None))
    assert await recover(tmp_path / "inflight", live, limits, lambda model, tokens: 1) == 1
    await live.close()
    conn = await asyncpg.connect(fresh_pg)
    try:
        rows = await conn.fetch("SELECT status, cost_nusd FROM usage_records "
                                "WHERE request_id = $1", real.request_id)
    finally:
        await conn.close()
    assert [(r["status"], r["cost_nusd"]) for r in rows] == [(200, real.cost_nusd)]


@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
async def test_close_flushes_everything(engine: str, fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = make(engine, fresh_pg, tmp_path, spool, flush_rows=100_000,
                  flush_interval_ms=60_000)
    await ledger.start()
    for r in known_records(BASE, n=700):
        ledger.enqueue(r)
    assert ledger.stats().records_written == 0
    await ledger.close()
    assert ledger.stats().records_written == 700
    assert await stored(engine, fresh_pg, tmp_path) == (700, 700, 700)
    assert spool_files(spool) == []


_KILLED_WRITER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from ledger_support import known_records
from datetime import datetime, UTC
from pathlib import Path
from proxy.config import LedgerConfig
from proxy.ledger.postgres import postgres_ledger
from proxy.ledger.sqlite import sqlite_ledger

async def main() -> None:
    cls = postgres_ledger if {engine!r} == "postgres" else sqlite_ledger
    ledger = cls({url!r}, LedgerConfig(flush_rows=10**6, flush_interval_ms=600_000),
                 Path({spool!r}))
    await ledger.start()
    for r in known_records(datetime(2024, 6, 1, 9, 30, tzinfo=UTC), n=500):
        ledger.enqueue(r)
    await asyncio.sleep(0)  # the journal writes this iteration's lines in a call_soon
    print("enqueued", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.slow  # a subprocess gateway or writer
@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
async def test_the_spool_of_a_killed_writer_is_replayed_exactly_once(
        engine: str, fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    url = fresh_pg if engine == "postgres" else f"sqlite:///{tmp_path / 'ledger.db'}"
    script = _KILLED_WRITER.format(tests=str(TESTS), engine=engine, url=url, spool=str(spool))
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                 stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 30)
    assert line.strip() == b"enqueued"
    os.kill(child.pid, signal.SIGKILL)
    await child.wait()
    assert spool_files(spool)

    records = known_records(BASE, n=500)
    # The first 100 reached the database before the kill; their segment was not yet deleted.
    early = make(engine, fresh_pg, tmp_path, tmp_path / "other")
    await early.start()
    for r in records[:100]:
        early.enqueue(r)
    await early.close()

    heir = make(engine, fresh_pg, tmp_path, spool)
    await heir.start()
    await heir.close()
    counts = heir.stats()
    assert (counts.records_replayed, counts.records_written, counts.records_duplicate) == (
        500, 400, 100)
    assert await stored(engine, fresh_pg, tmp_path) == (500, 500, 500)
    assert spool_files(spool) == []

    again = make(engine, fresh_pg, tmp_path, spool)
    await again.start()
    await again.close()
    assert again.stats().records_replayed == 0


async def test_a_live_writers_spool_is_not_replayed_by_another(fresh_pg: str, tmp_path: Path
                                                               ) -> None:
    spool = tmp_path / "spool"
    away = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    live = postgres_ledger(away, LedgerConfig(flush_interval_ms=10), spool, **FAST)
    await live.start()
    records: list[UsageRecord] = known_records(BASE, n=200)
    for r in records:
        live.enqueue(r)
    await wait_for(lambda: live.stats().records_spooled == 200)
    assert spool_files(spool)

    sibling = make("postgres", fresh_pg, tmp_path, spool)
    await sibling.start()
    await sibling.close()
    assert sibling.stats().records_replayed == 0  # the files are locked by a live writer

    await live.close()  # the database is still away: its spool stays for the next start
    heir = make("postgres", fresh_pg, tmp_path, spool)
    await heir.start()
    await heir.close()
    assert heir.stats().records_replayed == 200
    assert await count_records(fresh_pg) == (200, 200, 200)


async def test_a_torn_spool_line_is_quarantined_and_the_rest_replayed(
        fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    records = known_records(BASE, n=50)
    lines = [msgspec.json.encode(r) for r in records]
    # A writer killed in the middle of a write leaves half a line at the end of its file.
    (spool / "ledger-00000000000000000001-1-dead-000001.jsonl").write_bytes(
        b"\n".join(lines) + b"\n" + lines[0][:40])
    heir = make("postgres", fresh_pg, tmp_path, spool)
    await heir.start()
    await heir.close()
    assert (heir.stats().records_replayed, heir.stats().records_quarantined) == (50, 1)
    assert await count_records(fresh_pg) == (50, 50, 50)


async def test_a_record_enqueued_after_close_waits_on_disk_for_the_next_start(
        fresh_pg: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = make("postgres", fresh_pg, tmp_path, spool)
    await first.start()
    await first.close()
    late = known_records(BASE, n=1)[0]
    first.enqueue(late)  # a request that finished after shutdown began
    assert len(spool_files(spool)) == 1
    heir = make("postgres", fresh_pg, tmp_path, spool)
    await heir.start()
    await heir.close()
    assert heir.stats().records_written == 1


async def test_copy_rows_come_in_slices_with_a_loop_turn_between_them() -> None:
    # COPY encodes every row on the event loop; a busy worker's 200 ms batch must not hold
    # the requests behind it for the whole encoding. Another task counts the loop's turns
    # while the rows are read (nothing else here yields to the loop).
    rows = [(i,) for i in range(10 * COPY_SLICE + 1)]
    turns_at: list[int] = []
    turns = 0
    reading = True

    async def ticker() -> None:
        nonlocal turns
        while reading:
            turns += 1
            await asyncio.sleep(0)

    ticks = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    async for _ in in_slices(rows):
        turns_at.append(turns)
    reading = False
    await ticks
    assert len(turns_at) == len(rows)
    slices = [turns_at[i:i + COPY_SLICE] for i in range(0, len(rows), COPY_SLICE)]
    assert all(len(set(piece)) == 1 for piece in slices)  # no turn inside a slice
    firsts = [piece[0] for piece in slices]
    assert all(a < b for a, b in itertools.pairwise(firsts))  # a turn between each


async def test_a_batch_of_many_slices_lands_whole(fresh_pg: str) -> None:
    await migrate(fresh_pg)
    sink = PostgresSink(fresh_pg)
    try:
        assert await sink.write(known_records(BASE, n=1000)) == 1000
    finally:
        await sink.close()
    assert await count_records(fresh_pg) == (1000, 1000, 1000)
