"""/readyz: 503 while a dependency is away beyond what the gateway absorbs, and says which."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
from harness import gateway_settings, running_gateway

from proxy.gateway import GATEWAY
from proxy.health import CACHE_S
from proxy.stats import LedgerStats


class StandInLedger:
    """A ledger that only reports stats (readiness reads nothing else)."""

    def __init__(self, stats: LedgerStats) -> None:
        self._stats = stats

    def stats(self) -> LedgerStats:
        return self._stats


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(url + "/readyz")
        return resp.status, await resp.json()


async def test_ready_with_postgresql_and_redis_reachable(
    tmp_path: Path, fresh_pg: str, redis_url: str
) -> None:
    settings = gateway_settings(tmp_path, PROXY_DATABASE_URL=fresh_pg, PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as gw:
        status, body = await readyz(gw.url)
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


async def test_unreachable_redis_with_limits_failing_closed_is_503_naming_redis(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path, "[limits]\nfail_closed = true\n",
                                PROXY_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    async with running_gateway(settings) as gw:
        status, body = await readyz(gw.url)
        metrics = (await gw.app[GATEWAY].metrics.scrape()).decode()
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["redis"] == {"status": "down", "error": "ConnectionError"}
    assert body["checks"]["database"]["status"] == "ok"
    assert 'proxy_redis_errors_total{component="readyz"} 1.0' in metrics


async def test_unreachable_redis_with_limits_failing_open_is_ready_but_degraded(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path, PROXY_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    assert not settings.limits.fail_closed
    async with running_gateway(settings) as gw:
        status, body = await readyz(gw.url)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["redis"]["absorbed_by"] == "in-process limits (fail open)"


async def test_unreachable_database_is_503_unless_the_ledger_spools(tmp_path: Path) -> None:
    db = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    settings = gateway_settings(tmp_path)
    async with running_gateway(settings) as gw:
        gateway = gw.app[GATEWAY]
        readiness = gateway.readiness
        readiness._database_url = db  # the app started on SQLite; now its database is away
        ledger = gateway.ledger
        try:
            # a ledger that keeps records in memory only would lose them: not ready
            memory_only: Any = StandInLedger(LedgerStats(spools=False, queue_depth=12))
            gateway.ledger = memory_only
            status, body = await readyz(gw.url)
            assert status == 503
            assert body["checks"]["database"]["status"] == "down"
            assert "127.0.0.1" not in str(body) and "nowhere" not in str(body)  # no address
            # a ledger that spools loses nothing while the database is away: still ready
            spooling: Any = StandInLedger(LedgerStats(spools=True, records_spooled=3,
                                                      queue_depth=12))
            gateway.ledger = spooling
            await asyncio.sleep(CACHE_S)
            status, body = await readyz(gw.url)
        finally:
            gateway.ledger = ledger
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == {"status": "down", "error": body["checks"]["database"]
                                          ["error"], "absorbed_by": "ledger spool"}
    assert body["checks"]["ledger"] == {"status": "spooling", "queue_depth": 12}


async def test_a_burst_of_probes_costs_one_check_per_second(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        readiness = gw.app[GATEWAY].readiness
        calls = 0
        probe = readiness._database

        async def counted() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return await probe()

        readiness._database = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(readyz(gw.url) for _ in range(20)))
        answers.append(await readyz(gw.url))
        assert calls == 1
        assert {status for status, _ in answers} == {200}
        await asyncio.sleep(CACHE_S)
        await readyz(gw.url)
        assert calls == 2
