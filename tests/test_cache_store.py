"""Stores: the in-process LRU (memory bound, TTL) and Redis (real server, TTL, namespace)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.cache import CachedCompletion, MemoryLRU, RedisCache, ResponseCache
from proxy.cache.store import entry_size
from proxy.config import CacheConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(n: int, size: int = 1000) -> CachedCompletion:
    return CachedCompletion(body=b"x" * size, prompt_tokens=n, completion_tokens=1, model="m")


async def test_memory_lru_stays_under_its_byte_bound_evicting_least_recently_used() -> None:
    one = entry_size("k00", entry(0))
    lru = MemoryLRU(max_bytes=one * 3)
    for i in range(3):
        await lru.set(f"k{i:02d}", entry(i), ttl_s=60)
    assert await lru.get("k00") is not None  # k00 is now the most recently used
    await lru.set("k03", entry(3), ttl_s=60)
    assert len(lru) == 3 and lru.size_bytes <= lru.max_bytes
    assert await lru.get("k01") is None  # the least recently used went
    assert [await lru.get(k) is not None for k in ("k00", "k02", "k03")] == [True] * 3


async def test_memory_lru_bound_holds_under_many_entries() -> None:
    lru = MemoryLRU(max_bytes=50_000)
    for i in range(1000):
        await lru.set(f"key-{i}", entry(i, size=100 + i % 700), ttl_s=60)
        assert lru.size_bytes <= 50_000
    assert 0 < len(lru) < 1000
    assert await lru.get("key-999") is not None


async def test_memory_lru_skips_an_entry_larger_than_the_bound() -> None:
    lru = MemoryLRU(max_bytes=2000)
    await lru.set("small", entry(1, size=100), ttl_s=60)
    await lru.set("huge", entry(2, size=5000), ttl_s=60)
    assert await lru.get("huge") is None and await lru.get("small") is not None


async def test_memory_lru_replacing_a_key_does_not_leak_its_size() -> None:
    lru = MemoryLRU(max_bytes=100_000)
    for _ in range(10):
        await lru.set("same", entry(1), ttl_s=60)
    assert len(lru) == 1 and lru.size_bytes == entry_size("same", entry(1))


async def test_memory_lru_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    lru = MemoryLRU(max_bytes=100_000, clock=clock)
    await lru.set("k", entry(1), ttl_s=10)
    clock.now = 9.9
    assert await lru.get("k") == entry(1)
    clock.now = 10.0
    assert await lru.get("k") is None
    assert len(lru) == 0 and lru.size_bytes == 0


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_store_round_trips_under_the_namespace_with_a_ttl(
    redis_client: aioredis.Redis, redis_namespace: str
) -> None:
    store = RedisCache(redis_client, redis_namespace)
    value = CachedCompletion(body=b'{"id":"x"}', prompt_tokens=3, completion_tokens=4,
                             cached_tokens=1, finish_reason="stop", model="m", provider="p")
    key = "ab" * 32
    await store.set(key, value, ttl_s=30)
    assert await store.get(key) == value
    assert await store.get("cd" * 32) is None
    raw_key = f"{redis_namespace}:cache:{key}"
    assert await redis_client.exists(raw_key) == 1
    ttl_ms = await redis_client.pttl(raw_key)
    assert 29_000 < ttl_ms <= 30_000


async def test_redis_entries_expire(redis_client: aioredis.Redis, redis_namespace: str) -> None:
    store = RedisCache(redis_client, redis_namespace)
    await store.set("k", entry(1, size=10), ttl_s=0.2)
    assert await store.get("k") is not None
    await asyncio.sleep(0.35)
    assert await store.get("k") is None


async def test_redis_garbage_entry_is_a_miss(
    redis_client: aioredis.Redis, redis_namespace: str
) -> None:
    store = RedisCache(redis_client, redis_namespace)
    await redis_client.set(store.redis_key("k"), b"not msgpack of an entry", ex=30)
    assert await store.get("k") is None


async def test_redis_down_is_a_miss_not_an_error() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    store = RedisCache(client, "nowhere", timeout_s=0.5)
    try:
        await store.set("k", entry(1), ttl_s=10)  # logged, not raised
        assert await store.get("k") is None
    finally:
        await client.aclose()


async def test_response_cache_picks_redis_when_configured(
    redis_client: aioredis.Redis, redis_namespace: str
) -> None:
    cfg = CacheConfig(ttl_s=60, models=("m",))
    shared = ResponseCache.for_settings(cfg, redis_client, redis_namespace)
    other_instance = ResponseCache.for_settings(cfg, redis_client, redis_namespace)
    assert isinstance(shared.store_backend, RedisCache)
    await shared.store("k" * 64, entry(7))
    assert await other_instance.get("k" * 64) == entry(7)  # shared by every instance
    assert 59_000 < await redis_client.pttl(f"{redis_namespace}:cache:{'k' * 64}") <= 60_000
    local = ResponseCache.for_settings(cfg, None, redis_namespace)
    assert isinstance(local.store_backend, MemoryLRU)
    assert local.wanted("m") and not local.wanted("n")
