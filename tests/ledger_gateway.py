"""The gateway on PostgreSQL and Redis in front of the fake providers, and what each side
says a key spent: for tests that check that the spend counter and the ledger agree."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from conftest import fake_provider_toml
from harness import Gateway, gateway_settings, running_gateway

# The ledger flushes every 20 ms so that the tests' polls end quickly.
LEDGER_TOML = """
[ledger]
flush_interval_ms = 20
"""


@asynccontextmanager
async def pg_redis_gateway(tmp_path: Path, openai_url: str, anthropic_url: str, pg: str,
                           redis_url: str, namespace: str) -> AsyncIterator[Gateway]:
    toml = (f'redis_namespace = "{namespace}"\n' + fake_provider_toml(openai_url, anthropic_url)
            + LEDGER_TOML)
    settings = gateway_settings(tmp_path, toml, PROXY_DATABASE_URL=pg,
                                PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as gw:
        yield gw


async def new_key(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    resp = await http.post(gw.url + "/v1/api-keys", json={"name": "tenant"},
                           headers=gw.headers)
    assert resp.status == 200, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def counter_spend(http: aiohttp.ClientSession, gw: Gateway, key_id: str) -> int:
    """nano-USD the spend counter (Redis) holds for the key this period."""
    resp = await http.get(f"{gw.url}/v1/api-keys/{key_id}", headers=gw.headers)
    assert resp.status == 200, await resp.text()
    return round(float((await resp.json())["spend"]) * 1e9)


async def ledger_spend(pg: str, key_id: str) -> tuple[int, int, int]:
    """(records, their cost, the cost the key's hourly rollup holds), in nano-USD."""
    conn = await asyncpg.connect(pg)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM usage_records WHERE key_id = $1), "
            "(SELECT coalesce(sum(cost_nusd), 0) FROM usage_records WHERE key_id = $1), "
            "(SELECT coalesce(sum(cost_nusd), 0) FROM usage_key_hourly WHERE key_id = $1)",
            key_id)
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll an asynchronous condition (a database or API read) until it holds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def settled(http: aiohttp.ClientSession, gw: Gateway, pg: str, key_id: str,
                  records: int) -> tuple[int, int]:
    """Once the ledger holds `records` records of the key and its rollup agrees with them:
    (what the spend counter says, what the ledger says)."""
    async def landed() -> bool:
        count, cost, rolled = await ledger_spend(pg, key_id)
        return count == records and cost == rolled

    await until(landed)
    _, cost, _ = await ledger_spend(pg, key_id)

    async def charged() -> bool:
        return await counter_spend(http, gw, key_id) == cost

    await until(charged)  # the settle is fire-and-forget: it may land a moment later
    return await counter_spend(http, gw, key_id), cost
