"""Where keys live: no secret at rest, and changes reaching every instance within a second."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from harness import Gateway, gateway_settings, running_gateway
from redis.asyncio.client import PubSub

from proxy import migrate as migrate_module
from proxy.bootstrap import key_secret
from proxy.gateway import GATEWAY
from proxy.keys.events import KeyEvents
from proxy.keys.model import KeyRow
from proxy.keys.registry import KeyRegistry
from proxy.keys.sqlite import SqliteKeyStore
from proxy.keys.store import KeyStore, PostgresKeyStore
from proxy.migrate import SQL_DIR, migrate

CHAT = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create(http: aiohttp.ClientSession, gw: Gateway, **body: object) -> dict[str, str]:
    resp = await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)
    assert resp.status == 200, await resp.text()
    made: dict[str, str] = await resp.json()
    return made


async def status(http: aiohttp.ClientSession, gw: Gateway, key: str) -> int:
    resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(key))
    await resp.read()
    return resp.status


async def seconds_until(check: Callable[[], Awaitable[bool]], limit: float = 5.0) -> float:
    """Poll an observable condition; how long it took to hold."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_no_secret_in_the_keys_table_or_a_full_pg_dump(
    tmp_path: Path, fresh_pg: str, http: aiohttp.ClientSession
) -> None:
    settings = gateway_settings(tmp_path, PROXY_DATABASE_URL=fresh_pg)
    async with running_gateway(settings) as gw:
        made = await create(http, gw, name="secret-holder", labels=["x"])
        assert await status(http, gw, made["key"]) == 200
    key = made["key"]
    conn = await asyncpg.connect(fresh_pg)
    try:
        rows = await conn.fetch("SELECT * FROM api_keys")
    finally:
        await conn.close()
    assert len(rows) == 1
    expected = hmac.new(key_secret(settings), key.encode(), hashlib.sha256).hexdigest()
    assert rows[0]["key_hash"] == expected
    dump = (await asyncio.to_thread(
        subprocess.run, ["pg_dump", "--no-owner", fresh_pg], capture_output=True, text=True,
        check=True, timeout=60,
    )).stdout
    assert "secret-holder" in dump and expected in dump  # the dump has the row...
    assert key not in dump and key[10:] not in dump and key[-16:] not in dump  # ...not the secret
    assert key not in str([dict(r) for r in rows])


async def test_no_secret_in_the_sqlite_files(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        made = await create(http, gw)
        assert await status(http, gw, made["key"]) == 200
    data = tmp_path / "data"
    blobs = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert made["key"][6:].encode() not in blobs


@asynccontextmanager
async def two_instances(
    tmp_path: Path, database_url: str, redis_url: str | None, namespace: str
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways on one PostgreSQL (and one Redis when given), sharing the key secret."""
    env = {"PROXY_DATABASE_URL": database_url}
    if redis_url:
        env["PROXY_REDIS_URL"] = redis_url
    settings = gateway_settings(tmp_path, f'redis_namespace = "{namespace}"\n', **env)
    async with running_gateway(settings) as a, running_gateway(settings) as b:
        yield a, b


async def test_delete_and_limit_change_reach_another_instance_within_1s_over_pubsub(
    tmp_path: Path, fresh_pg: str, redis_url: str, redis_namespace: str,
    http: aiohttp.ClientSession,
) -> None:
    async with two_instances(tmp_path, fresh_pg, redis_url, redis_namespace) as (a, b):
        await _delete_and_limit_change(http, a, b)


async def _delete_and_limit_change(http: aiohttp.ClientSession, a: Gateway, b: Gateway) -> None:
    made = await create(http, a)
    assert await status(http, b, made["key"]) == 200  # B knows a key A made a moment ago
    resp = await http.patch(f"{a.url}/v1/api-keys/{made['id']}/limit", json={"limit": 0},
                            headers=a.headers)
    assert resp.status == 200

    async def b_refuses(code: int) -> bool:
        return await status(http, b, made["key"]) == code

    assert await seconds_until(lambda: b_refuses(429)) < 1.0
    resp = await http.delete(f"{a.url}/v1/api-keys/{made['id']}", headers=a.headers)
    assert resp.status == 200
    assert await seconds_until(lambda: b_refuses(401)) < 1.0


async def test_without_redis_the_periodic_refresh_revokes_on_another_instance(
    tmp_path: Path, fresh_pg: str, http: aiohttp.ClientSession
) -> None:
    async with two_instances(tmp_path, fresh_pg, None, "unused") as (a, b):
        made = await create(http, a)
        assert await status(http, b, made["key"]) == 200
        resp = await http.delete(f"{a.url}/v1/api-keys/{made['id']}", headers=a.headers)
        assert resp.status == 200
        took = await seconds_until(lambda: _refused(http, b, made["key"]))
        assert took < 1.5  # one refresh interval (1 s) and a query


async def _refused(http: aiohttp.ClientSession, gw: Gateway, key: str) -> bool:
    return await status(http, gw, key) == 401



async def test_owner_and_cache_reach_another_instance_over_pubsub(
    tmp_path: Path, fresh_pg: str, redis_url: str, redis_namespace: str,
    http: aiohttp.ClientSession,
) -> None:
    async with two_instances(tmp_path, fresh_pg, redis_url, redis_namespace) as (a, b):
        made = await create(http, a, owner="acme", cache=True)
        keys = b.app[GATEWAY].auth.keys
        assert keys is not None
        digest = b.app[GATEWAY].auth.digest(made["key"])

        async def b_has_it() -> bool:
            return keys.cached(digest) is not None

        await seconds_until(b_has_it, 1.0)  # the message, not a lookup on a miss
        principal = keys.cached(digest)
        assert principal is not None and (principal.owner, principal.cache) == ("acme", True)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_keys_made_before_0003_get_the_default_owner_and_no_cache(
    tmp_path: Path, fresh_pg: str, monkeypatch: pytest.MonkeyPatch, backend: str,
) -> None:
    url = fresh_pg if backend == "postgres" else f"sqlite:///{tmp_path / 'keys.db'}"
    old = tmp_path / "sql"
    (old / "sqlite").mkdir(parents=True)
    for sub in (old, old / "sqlite"):
        src = SQL_DIR / sub.relative_to(old)
        for name in ("0001_ledger.sql", "0002_api_keys.sql"):
            (sub / name).write_text((src / name).read_text())
    with monkeypatch.context() as m:
        m.setattr(migrate_module, "SQL_DIR", old)
        assert await migrate(url) == ["0001", "0002"]
    store: KeyStore = (PostgresKeyStore(url) if backend == "postgres"
                       else SqliteKeyStore(str(tmp_path / "keys.db")))
    now = datetime.now(UTC)
    await store.start()
    try:
        if isinstance(store, PostgresKeyStore):  # the 0002 columns only, as an old gateway wrote
            await store.pool.execute("INSERT INTO api_keys (id, key_hash, key_prefix) "
                                     "VALUES ('key_old', 'h-old', 'sk-px-old0')")
        else:
            with sqlite3.connect(tmp_path / "keys.db") as conn:
                conn.execute("INSERT INTO api_keys (id, key_hash, key_prefix, created_at, "
                             "updated_at) VALUES ('key_old', 'h-old', 'sk-px-old0', ?, ?)",
                             (now.isoformat(), now.isoformat()))
        assert (await migrate(url))[0] == "0003"  # and any migration after it
        row = await store.get("key_old")
        assert row is not None and (row.owner, row.cache) == ("default", False)
        new = await store.insert(KeyRow(id="key_new", key_hash="h-new", key_prefix="sk-px-new0",
                                        owner="acme", cache=True, created_at=now,
                                        updated_at=now))
        assert (new.owner, new.cache) == ("acme", True)
        assert await migrate(url) == []
    finally:
        await store.close()


async def test_closing_ends_a_key_listener_whose_cancellation_redis_py_lost(
    tmp_path: Path, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = PubSub.get_message
    lost: list[bool] = []

    async def losing_cancellation(self: PubSub, ignore_subscribe_messages: bool = False,
                                  timeout: float | None = 0.0) -> Any:
        try:
            return await real(self, ignore_subscribe_messages=ignore_subscribe_messages,
                              timeout=timeout)
        except asyncio.CancelledError:
            if lost:  # only the first: a second cancel (wait_for's) ends a failing test
                raise
            lost.append(True)
            return None  # what redis-py sometimes does with a read cancelled after a restart

    monkeypatch.setattr(PubSub, "get_message", losing_cancellation)
    await migrate(f"sqlite:///{tmp_path / 'keys.db'}")
    events = KeyEvents(redis_url, redis_namespace)
    registry = KeyRegistry(SqliteKeyStore(str(tmp_path / "keys.db")), events)
    await registry.start()

    async def subscribed() -> bool:
        return events.connected

    await seconds_until(subscribed)
    await asyncio.sleep(0.1)  # into the blocking read
    started = time.monotonic()
    await asyncio.wait_for(registry.close(), 3.0)  # it used to wait forever
    assert lost and time.monotonic() - started < 1.0


def test_a_row_read_again_keeps_its_principal_and_a_changed_one_replaces_it(
    tmp_path: Path,
) -> None:
    registry = KeyRegistry(SqliteKeyStore(str(tmp_path / "keys.db")))
    now = datetime.now(UTC)
    row = KeyRow(id="key_a", key_hash="h-a", key_prefix="sk-px-a", rpm=10, created_at=now,
                 updated_at=now)
    registry.apply(row)
    held = registry.cached("h-a")
    registry.apply(KeyRow(**{f: getattr(row, f) for f in row.__struct_fields__}))  # a refresh
    assert registry.cached("h-a") is held
    registry.apply(msgspec.structs.replace(row, rpm=20))  # same stamp, new content
    changed = registry.cached("h-a")
    assert changed is not held and changed is not None and changed.rpm == 20
    registry.apply(msgspec.structs.replace(row, rpm=30, updated_at=now - timedelta(seconds=1)))
    assert registry.cached("h-a") is changed  # an older version never overwrites
