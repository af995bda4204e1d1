"""Readiness: can this instance serve requests without losing anything it must keep?

An unreachable dependency makes the instance unready (503) only beyond what the gateway
absorbs; within it, /readyz answers 200 with status "degraded" and names the dependency:

- The database may be away while the ledger spools records to local disk (nothing is lost)
  and keys are served from memory. A ledger that cannot spool would lose records: 503.
- Redis may be away while the limits count spend and rate in-process until it is back
  (`[limits] fail_closed = false`, the default; the cache misses meanwhile). With
  `fail_closed = true` every request would be refused, so the instance is not ready.

Each check is one cheap round trip under a short timeout: PING on the gateway's own Redis
client, SELECT 1 on a fresh database connection (a pooled one could be busy with a ledger
flush and time out for the wrong reason). The answer is kept for about a second and
concurrent probes share one check, so a probe storm costs at most one check per second. Failures
say only the error's type: /readyz is unauthenticated, so no address or message leaks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import asyncpg
import redis.asyncio as aioredis

from .config import Settings
from .migrate import is_sqlite, sqlite_path
from .stats import LedgerStats

TIMEOUT_S: Final = 0.5
CACHE_S: Final = 1.0
Check = dict[str, Any]


class Readiness:
    """Built by the gateway from what it reads: the ledger's stats (a getter, so that a
    replaced ledger is the one asked), the gateway's own Redis client, and where a failed
    probe is counted (`Metrics.dependency_error`)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Callable[[], LedgerStats],
        redis: aioredis.Redis | None,
        on_failure: Callable[[str, str], None],
    ) -> None:
        self._database_url = settings.database_url
        self._redis_url = settings.redis_url
        self._redis_fail_closed = settings.limits.fail_closed
        self._ledger = ledger
        self._shared_redis = redis
        self._on_failure = on_failure
        self._answer: tuple[bool, dict[str, Any]] | None = None
        self._answered = 0.0
        self._pending: asyncio.Future[tuple[bool, dict[str, Any]]] | None = None

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) where body is `{"status": ..., "checks": {...}}`."""
        if self._answer is not None and time.monotonic() - self._answered < CACHE_S:
            return self._answer
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._run())
        # Shielded: a probe that hangs up must not cancel the check other probes wait on.
        return await asyncio.shield(self._pending)

    async def _run(self) -> tuple[bool, dict[str, Any]]:
        try:
            database, redis = await asyncio.gather(self._database(), self._redis())
            ledger = self._ledger()
            spools = ledger.spools
            ready, degraded = True, False
            if database["status"] == "down":
                if spools:
                    database["absorbed_by"] = "ledger spool"
                    degraded = True
                else:
                    ready = False
            if redis["status"] == "down":
                if self._redis_fail_closed:
                    ready = False
                else:
                    redis["absorbed_by"] = "in-process limits (fail open)"
                    degraded = True
            checks = {
                "database": database,
                "redis": redis,
                "ledger": {
                    "status": "spooling" if spools and database["status"] == "down" else "ok",
                    "queue_depth": ledger.queue_depth,
                },
            }
            status = "not_ready" if not ready else "degraded" if degraded else "ready"
            self._answer = (ready, {"status": status, "checks": checks})
            self._answered = time.monotonic()
            return self._answer
        finally:
            self._pending = None

    async def _database(self) -> Check:
        if is_sqlite(self._database_url):
            return await self._probe("database", lambda: asyncio.to_thread(
                _sqlite_ping, sqlite_path(self._database_url)))
        return await self._probe("database", self._postgres_ping)

    async def _redis(self) -> Check:
        if not self._redis_url:
            return {"status": "not_configured"}
        return await self._probe("redis", self._redis_ping)

    async def _probe(self, dependency: str, ping: Callable[[], Any]) -> Check:
        started = time.monotonic()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await ping()
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            self._on_failure(dependency, "readyz")
            error = "TimeoutError" if isinstance(e, TimeoutError) else type(e).__name__
            return {"status": "down", "error": error}
        return {"status": "ok", "latency_ms": round((time.monotonic() - started) * 1000, 2)}

    async def _postgres_ping(self) -> None:
        conn = await asyncpg.connect(self._database_url, timeout=TIMEOUT_S)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=TIMEOUT_S)

    async def _redis_ping(self) -> None:
        shared = self._shared_redis
        if shared is not None:
            await shared.ping()
            return
        assert self._redis_url is not None
        client = aioredis.Redis.from_url(
            self._redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        try:
            await client.ping()
        finally:
            await client.aclose()


def _sqlite_ping(path: str) -> None:
    """Open the existing file read-only and read its schema: no file is ever created."""
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=TIMEOUT_S)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()
