"""Where cached answers live: Redis (shared by every instance) or an in-process LRU.

Both take the key from `key.cache_key` and a `CachedCompletion`, and keep it for a TTL.
Entries are MessagePack (the body stays binary; no base64, no second JSON pass).

The cache only ever saves work: `RedisCache` turns Redis errors and slowness (past
`timeout_s`) into a miss or a skipped store, logged, never into a failed request. The
Redis client must return bytes (`decode_responses=False`, the default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .completion import CachedCompletion

log = logging.getLogger(__name__)

_encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(CachedCompletion).decode
# Per entry, beyond its body and key: the struct, the dict slot, the strings. An estimate,
# on the high side, so the bound holds on real memory rather than on body bytes only.
ENTRY_OVERHEAD: Final = 400


class CacheStore(Protocol):
    errors: int  # failed calls to a shared store, for metrics (in-process: always 0)

    async def get(self, key: str) -> CachedCompletion | None: ...

    async def set(self, key: str, value: CachedCompletion, ttl_s: float) -> None: ...


def entry_size(key: str, value: CachedCompletion) -> int:
    return len(key) + len(value.body) + len(value.model) + len(value.provider) + ENTRY_OVERHEAD


class MemoryLRU:
    """An in-process LRU bounded by `max_bytes`, with a TTL per entry.

    One per process: without Redis, each worker has its own cache.
    """

    __slots__ = ("_clock", "_entries", "errors", "max_bytes", "size_bytes")

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, int, CachedCompletion]] = OrderedDict()
        self._clock = clock
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.errors = 0  # nothing here fails; the same interface as RedisCache

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedCompletion | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, _, value = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: CachedCompletion, ttl_s: float) -> None:
        size = entry_size(key, value)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, size, value)
        self.size_bytes += size
        while self.size_bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # least recently used first

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self.size_bytes -= size


class RedisCache:
    """Entries at `<namespace>:cache:<key>`, expired by Redis itself (SET ... PX)."""

    __slots__ = ("_prefix", "_redis", "errors", "timeout_s")

    def __init__(self, client: aioredis.Redis, namespace: str, *, timeout_s: float = 0.5) -> None:
        self._redis = client
        self._prefix = f"{namespace}:cache:"
        self.timeout_s = timeout_s
        self.errors = 0  # failed Redis calls, for metrics

    def redis_key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> CachedCompletion | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                data = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as e:
            self.errors += 1
            log.warning("response cache: Redis GET failed, serving uncached: %s", e)
            return None
        if not isinstance(data, bytes):
            return None  # absent (None); a str would mean a client with decode_responses
        try:
            return _decode_entry(data)
        except msgspec.DecodeError:
            return None  # written by an incompatible version: a miss, overwritten on store

    async def set(self, key: str, value: CachedCompletion, ttl_s: float) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._redis.set(
                    self._prefix + key, _encode_entry(value), px=max(1, int(ttl_s * 1000))
                )
        except (RedisError, OSError, TimeoutError) as e:
            self.errors += 1
            log.warning("response cache: Redis SET failed, answer not cached: %s", e)
