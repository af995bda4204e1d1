"""Ledger benchmark: ingest rate through the writer, and report latency over 10M records.

    python loadtest/bench_ledger.py                       # both parts, fresh databases
    python loadtest/bench_ledger.py --ingest 500000       # records for the ingest part
    python loadtest/bench_ledger.py --skip-ingest --reuse proxy_bench_reports   # rerun reports

Ingest: records (1,000 keys, 20 models, user ids, tags, extra) are enqueued into the
PostgreSQL ledger (`postgres_ledger`) with the default settings (flush at 1,000 records or
200 ms) as fast as the producer can, 1,000 per event-loop turn, first waiting while 20,000 are queued (records
flushed from memory), then never waiting (the queue overflows into the spool files and is
read back); the rate is records landed in PostgreSQL (COPY, insert, five rollup tables, in
one transaction per batch, two transactions at a time) divided by the time from the first
enqueue until the last is committed. Reports: 10 million records over the last 30 days, 1,000 keys,
20 models, generated with generate_series straight into usage_records and folded into the
rollups by the writer's own upserts (in a database of its own, kept with --keep); then the
organization report over the default window (the last 30 days, so both edge hours are
partial and read from raw records) grouped by model, by key, and by model per day, each
timed end to end through the ledger's report (SQL, fetch, assembly): the median and the
worst of 20 runs after 3 warm-ups. Databases live on the PostgreSQL at --pg.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.config import LedgerConfig
from proxy.ledger.postgres import postgres_ledger
from proxy.ledger.record import UsageRecord
from proxy.ledger.report import UsageQuery
from proxy.ledger.schema import POSTGRES, upserts
from proxy.migrate import migrate

MODELS: Final = [f"provider{i % 5}/model-{i:02d}" for i in range(20)]
KEYS: Final = 1000


def _url(admin: str, name: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + name


async def _create(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _url(admin, name)


async def _drop(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _records(n: int) -> list[UsageRecord]:
    rng = random.Random(1)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        model = MODELS[rng.randrange(20)]
        prompt, completion = rng.randrange(2000), rng.randrange(800)
        out.append(UsageRecord(
            request_id=secrets.token_hex(12), ts=now + timedelta(microseconds=i * 20),
            key_id=f"key-{rng.randrange(KEYS):04d}", model_requested=model, model=model,
            provider=model.split("/")[0], region="global",
            status=200 if rng.random() < 0.97 else 502, prompt_tokens=prompt,
            completion_tokens=completion, cost_nusd=prompt * 150 + completion * 600,
            latency_ms=rng.random() * 900, user_id=f"user-{rng.randrange(200)}",
            tags=["prod"] if rng.random() < 0.7 else ["beta", "eu"],
            extra={"team": f"team-{rng.randrange(10)}"},
        ))
    return out


async def bench_ingest(admin: str, n: int, paced: bool) -> dict[str, float]:
    """paced: the producer waits while 20,000 records are queued (the writer's own pace,
    records flushed from memory); unpaced: it never waits, the queue overflows at
    queue_limit and the rest is read back from the spool files."""
    name = f"proxy_bench_ingest_{secrets.token_hex(4)}"
    dsn = await _create(admin, name)
    try:
        await migrate(dsn)
        records = _records(n)
        with tempfile.TemporaryDirectory() as spool:
            ledger = postgres_ledger(dsn, LedgerConfig(), Path(spool))
            await ledger.start()
            started = time.perf_counter()
            for i in range(0, n, 1000):
                for r in records[i : i + 1000]:
                    ledger.enqueue(r)
                await asyncio.sleep(0)
                while paced and ledger.stats().queue_depth > 20_000:
                    await asyncio.sleep(0.001)
            produced = time.perf_counter() - started
            while ledger.stats().records_written < n:
                await asyncio.sleep(0.005)
            landed = time.perf_counter() - started
            stats = {"records": n, "seconds": landed, "records_per_s": n / landed,
                     "enqueue_per_s": n / produced, "spooled": ledger.stats().records_spooled,
                     "flushes": ledger.stats().flushes}
            await ledger.close()
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT sum(requests) FROM usage_hourly")
            assert stored == n, (stored, n)
        finally:
            await conn.close()
        return stats
    finally:
        await _drop(admin, name)


# Keys, models and token counts are hashes of the row number: independent and uniform, so
# every (hour, key, model) combination occurs (the densest rollups, the slowest reports).
_GENERATE: Final = """
INSERT INTO usage_records
SELECT 'req-' || i,
       $1::timestamptz + (i * $2::float8 / $3) * interval '1 second',
       'key-' || lpad((abs(hashint8(i)) % 1000)::text, 4, '0'),
       m.model, m.model, split_part(m.model, '/', 1), 'global',
       CASE WHEN i % 37 = 0 THEN 502 WHEN i % 53 = 0 THEN 429 ELSE 200 END,
       NULL, NULL,
       t.p, t.c, t.p / 4, 0, t.p * 150 + t.c * 600, 0,
       (i % 900)::float8, NULL, i % 3 = 0, i % 41 = 0, 1, false,
       'user-' || (abs(hashint8(i + 7)) % 200), NULL,
       CASE WHEN i % 10 < 7 THEN ARRAY['prod'] ELSE ARRAY['beta', 'eu'] END,
       jsonb_build_object('team', 'team-' || (i % 10)), '{}'::jsonb
FROM generate_series($4::bigint, $5::bigint) AS i
CROSS JOIN LATERAL (SELECT (MODELS_ARRAY::text[])[1 + abs(hashint8(-i)) % 20] AS model) AS m
CROSS JOIN LATERAL (SELECT abs(hashint8(i * 3)) % 2000 AS p,
                           abs(hashint8(i * 5)) % 800 AS c) AS t
""".replace("MODELS_ARRAY", "'{" + ",".join(MODELS) + "}'")


async def generate(dsn: str, rows: int) -> float:
    """10M rows over the last 30 days in time order (as a live ledger fills), then rollups."""
    await migrate(dsn)
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        await conn.execute("SET synchronous_commit = off; SET work_mem = '256MB'; "
                           "SET maintenance_work_mem = '512MB'")
        end = datetime.now(UTC)
        start = end - timedelta(days=30)
        span = (end - start).total_seconds()
        step = 1_000_000
        for lo in range(1, rows + 1, step):
            hi = min(rows, lo + step - 1)
            await conn.execute(_GENERATE, start, span, rows, lo, hi)
            print(f"  records {hi:>10,}  {time.perf_counter() - started:6.0f} s", flush=True)
        for sql in upserts(POSTGRES, "usage_records"):
            await conn.execute(sql)
            print(f"  {sql.split()[2]:<18} {time.perf_counter() - started:6.0f} s", flush=True)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


# (label, group_by, resolution, key): the three targets first, then other shapes for reference.
REPORTS: Final = (
    ("org by model", "model", None, None),
    ("org by key", "key", None, None),
    ("org by day (model x day)", "model", "day", None),
    ("org by key x day", "key", "day", None),
    ("org by user_id", "user_id", None, None),
    ("org by tag x day", "tag", "day", None),
    ("one key by model x hour", "model", "hour", "key-0042"),
    ("one key by user_id", "user_id", None, "key-0042"),
)


async def bench_reports(dsn: str) -> dict[str, dict[str, float]]:
    ledger = postgres_ledger(dsn, LedgerConfig(), Path(tempfile.mkdtemp()))
    out = {}
    try:
        for label, group_by, resolution, key in REPORTS:
            times = []
            for i in range(23):
                end = datetime.now(UTC)
                q = UsageQuery(end - timedelta(days=30), end, group_by, resolution, key)
                t = time.perf_counter()
                report = await ledger.report(q)
                if i >= 3:
                    times.append((time.perf_counter() - t) * 1000)
            out[label] = {"median_ms": statistics.median(times), "max_ms": max(times),
                          "rows": len(report.rows), "requests": report.totals.requests}
        # The totals of the last organization report, against a scan of the records.
        end = datetime.now(UTC)
        q = UsageQuery(end - timedelta(days=30), end, "model")
        report = await ledger.report(q)
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT count(*), sum(cost_nusd) FROM usage_records "
                                      "WHERE ts >= $1 AND ts < $2", q.start, q.end)
        finally:
            await conn.close()
        assert row is not None
        assert (report.totals.requests, report.totals.cost_nusd) == (row[0], row[1]), row
        print(f"totals checked against a scan of the records: {row[0]:,} requests, "
              f"{row[1]:,} nano-USD")
    finally:
        await ledger.close()
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="an admin DSN; benchmark databases are created beside it")
    p.add_argument("--ingest", type=int, default=300_000, help="records for the ingest part")
    p.add_argument("--rows", type=int, default=10_000_000, help="records for the report part")
    p.add_argument("--reuse", help="report on this existing generated database")
    p.add_argument("--keep", action="store_true", help="keep the generated database")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-reports", action="store_true")
    args = p.parse_args()
    if not args.skip_ingest:
        for paced in (True, False):
            s = await bench_ingest(args.pg, args.ingest, paced)
            print(f"ingest {'from memory' if paced else 'overflowing'}: {s['records']:,} "
                  f"records in {s['seconds']:.2f} s = {s['records_per_s']:,.0f} records/s "
                  f"landed in PostgreSQL ({s['flushes']} segments, {s['spooled']:,} "
                  f"spooled past the queue limit)", flush=True)
    if args.skip_reports:
        return
    name = args.reuse or f"proxy_bench_reports_{secrets.token_hex(4)}"
    dsn = _url(args.pg, name)
    try:
        if not args.reuse:
            await _create(args.pg, name)
            print(f"generating {args.rows:,} records in {name} ...", flush=True)
            took = await generate(dsn, args.rows)
            print(f"generated in {took:.0f} s")
        for label, r in (await bench_reports(dsn)).items():
            print(f"report {label:<26} median {r['median_ms']:6.1f} ms  max "
                  f"{r['max_ms']:6.1f} ms  ({r['rows']} rows, {r['requests']:,} requests)")
    finally:
        if not args.reuse and not args.keep:
            await _drop(args.pg, name)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main())
