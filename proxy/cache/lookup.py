"""`ResponseCache`: the one object the chat handler talks to about caching.

It ties the opt-in rules and the key (`key.py`) to a store (`store.py`) and the TTL from
`[cache]`. Build it once per process with `ResponseCache.for_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from msgspec import Raw

from ..config import CacheConfig
from ..stats import DependencyErrors
from .completion import CachedCompletion
from .key import cache_key, cache_requested
from .store import CacheStore, MemoryLRU, RedisCache


class ResponseCache:
    __slots__ = ("_store", "config")

    def __init__(self, store: CacheStore, config: CacheConfig) -> None:
        self.config = config
        self._store = store

    @classmethod
    def for_settings(
        cls, config: CacheConfig, redis: aioredis.Redis | None, namespace: str
    ) -> ResponseCache:
        """Redis when the gateway has one (shared by all instances), else an in-process LRU."""
        store: CacheStore = (
            RedisCache(redis, namespace) if redis is not None else MemoryLRU(config.max_bytes)
        )
        return cls(store, config)

    @property
    def store_backend(self) -> CacheStore:
        return self._store

    def stats(self) -> DependencyErrors:
        return DependencyErrors(redis_errors=self._store.errors)

    def wanted(
        self,
        model_id: str,
        *,
        request_flag: bool = False,
        header: str | None = None,
        key_flag: bool = False,
    ) -> bool:
        """`key.cache_requested` with this gateway's `[cache]` settings."""
        return cache_requested(
            model_id, self.config, request_flag=request_flag, header=header, key_flag=key_flag
        )

    def key(
        self,
        owner: str,
        model_id: str,
        fields: Mapping[str, Raw],
        fallbacks: Sequence[str] | None = None,
    ) -> str:
        return cache_key(owner, model_id, fields, fallbacks)

    async def get(self, key: str) -> CachedCompletion | None:
        return await self._store.get(key)

    async def store(self, key: str, completion: CachedCompletion) -> None:
        """Keep a finished answer for `[cache] ttl_s`. Only call it for a 200 that ended well."""
        await self._store.set(key, completion, self.config.ttl_s)
