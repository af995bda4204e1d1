"""How long the ledger's COPY holds the event loop: all rows at once against slices.

    .venv/bin/python loadtest/bench_copy_slices.py            # 2,000 rows, 3 runs each
    .venv/bin/python loadtest/bench_copy_slices.py --rows 500

asyncpg encodes COPY rows on the event loop, and `pg_row` builds them there too; a busy
worker's 200 ms batch is a few thousand rows. A probe task yields in a loop during the COPY
and records its longest wait: the longest the loop was held. Both ways run side by side on
one connection to a scratch database (created and dropped here) on the local PostgreSQL,
and each also runs without the probe for its total time (the slices' extra cost).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from ledger_support import known_records  # the tests' record generator

from proxy.ledger.postgres import in_slices
from proxy.ledger.schema import COLUMNS, pg_row
from proxy.migrate import migrate

Row = tuple[object, ...]
# How the rows reach COPY: the list itself, or the ledger's slices (proxy/ledger/postgres.py)
WAYS: tuple[tuple[str, Callable[[list[Row]], Iterable[Row] | AsyncIterable[Row]]], ...] = (
    ("all at once", lambda rows: rows),
    ("slices", in_slices),
)


async def copy_once(conn: asyncpg.Connection, rows: Iterable[Row] | AsyncIterable[Row],
                    probe: bool) -> tuple[float, float]:
    """(total ms, longest loop turn ms) of one COPY into the scratch table."""
    await conn.execute("TRUNCATE scratch")
    longest = 0.0
    copying = True

    async def watch() -> None:
        nonlocal longest
        while copying:
            t0 = time.perf_counter()
            await asyncio.sleep(0)
            longest = max(longest, time.perf_counter() - t0)

    watcher = asyncio.create_task(watch()) if probe else None
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    await conn.copy_records_to_table("scratch", records=rows, columns=COLUMNS)
    total = time.perf_counter() - t0
    copying = False
    if watcher is not None:
        await watcher
    return total * 1000, longest * 1000


async def main(args: argparse.Namespace) -> None:
    admin = await asyncpg.connect(args.pg + "/postgres")
    db = "proxy_bench_copy_slices"
    await admin.execute(f"DROP DATABASE IF EXISTS {db}")
    await admin.execute(f"CREATE DATABASE {db}")
    try:
        dsn = f"{args.pg}/{db}"
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TEMP TABLE scratch (LIKE usage_records)")
        records = known_records(datetime(2024, 6, 1, tzinfo=UTC), n=args.rows)
        t0 = time.perf_counter()
        rows = [pg_row(r) for r in records]
        build_ms = (time.perf_counter() - t0) * 1000
        print(f"{args.rows} rows; pg_row {1000 * build_ms / args.rows:.2f} µs a row "
              f"({build_ms:.2f} ms at once)")
        print("| way | total ms (no probe) | µs a row | longest loop turn ms (probe) |")
        print("| --- | ---: | ---: | ---: |")
        for _ in range(args.runs):
            for name, way in WAYS:
                total, _ = await copy_once(conn, way(rows), probe=False)
                _, longest = await copy_once(conn, way(rows), probe=True)
                print(f"| {name} | {total:.2f} | {1000 * total / args.rows:.2f} | {longest:.2f} |")
        await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {db}")
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    a = p.parse_args()
    asyncio.run(main(a))
