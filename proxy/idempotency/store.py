"""Where idempotency keys live: in the process (embedded) or in Redis (shared).

One entry per (API key, idempotency key): the body digest it was claimed with, and either
the token of the request in flight or, once that request ended well, its `Answer`. A
claim is atomic (one Redis script, or one turn of the event loop in the process): of any
number of concurrent requests with one key, exactly one claims it. Finishing and giving
back are conditional on the token, so a request whose claim lapsed cannot overwrite or
delete the claim of the request that took the key after it.
"""

from __future__ import annotations

import hashlib

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..cache import CachedCompletion
from ..errors import ServiceUnavailable

log = logging.getLogger(__name__)

# Per kept answer beyond its bytes: the structs, the dict slot, the strings (an estimate on
# the high side, so the bound holds on real memory).
ENTRY_OVERHEAD: Final = 400
REDIS_TIMEOUT_S: Final = 1.0
FORMAT: Final = "v1"  # in the Redis key: bump when `Answer` changes, old entries are not read


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """A complete answer, as a repeat of its request gets it again."""

    model: str  # who answered (the `x-model` and `x-provider` headers)
    provider: str
    body: bytes = b""  # a JSON answer, byte for byte as it was sent
    stream: CachedCompletion | None = None  # a streamed one, replayed as SSE chunks
    cost_nusd: int = 0  # a stream's usage chunk shows what the first request cost
    usage_chunk: bool = True  # the stream had one (a provider that reports no usage: none)

    def size(self) -> int:
        return len(self.body) + (len(self.stream.body) if self.stream is not None else 0)


class Seen(NamedTuple):
    """What a claim found instead of a free key."""

    digest: str
    answer: Answer | None  # None: the first request is still in flight


class IdempotencyStore(Protocol):
    async def claim(
        self, key_id: str, key: str, digest: str, token: str, ttl_s: float
    ) -> Seen | None:
        """Take the key for the request `token` for `ttl_s` (None), or say what holds it."""

    async def finish(self, key_id: str, key: str, token: str, answer: Answer, ttl_s: float) -> bool:
        """Keep the answer of the request holding the key, for `ttl_s`; False when it was not
        kept (the claim is then still the request's to release, if it has not lapsed)."""

    async def release(self, key_id: str, key: str, token: str) -> None:
        """Give the key back (its request ended without a complete answer)."""


class _Claimed(NamedTuple):
    digest: str
    token: str
    expires: float


class _Kept(NamedTuple):
    digest: str
    answer: Answer
    expires: float
    size: int


class MemoryStore:
    """In-process: one per worker. Kept answers are bounded by `max_bytes` (oldest dropped
    first); claims are not (each is a request in flight, and goes when it ends)."""

    __slots__ = ("_claimed", "_clock", "_kept", "max_bytes", "size_bytes")

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._claimed: dict[tuple[str, str], _Claimed] = {}
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._clock = clock
        self.max_bytes = max_bytes
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._claimed) + len(self._kept)

    async def claim(
        self, key_id: str, key: str, digest: str, token: str, ttl_s: float
    ) -> Seen | None:
        name = (key_id, key)
        now = self._clock()
        kept = self._kept.get(name)
        if kept is not None:
            if kept.expires > now:
                return Seen(kept.digest, kept.answer)
            self._drop(name)
        claimed = self._claimed.get(name)
        if claimed is not None and claimed.expires > now:
            return Seen(claimed.digest, None)
        self._claimed[name] = _Claimed(digest, token, now + ttl_s)
        return None

    async def finish(self, key_id: str, key: str, token: str, answer: Answer, ttl_s: float) -> bool:
        name = (key_id, key)
        claimed = self._claimed.get(name)
        if claimed is None or claimed.token != token:
            return False  # the claim lapsed and another request holds the key now
        size = len(key_id) + len(key) + answer.size() + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False  # would drop every other answer and still not fit
        del self._claimed[name]
        now = self._clock()
        self._kept[name] = _Kept(claimed.digest, answer, now + ttl_s, size)
        self.size_bytes += size
        # Every answer is kept equally long, so the oldest expire first.
        while self._kept and (self.size_bytes > self.max_bytes
                              or next(iter(self._kept.values())).expires <= now):
            self._drop(next(iter(self._kept)))
        return True

    async def release(self, key_id: str, key: str, token: str) -> None:
        name = (key_id, key)
        claimed = self._claimed.get(name)
        if claimed is not None and claimed.token == token:
            del self._claimed[name]

    def _drop(self, name: tuple[str, str]) -> None:
        self.size_bytes -= self._kept.pop(name).size


# KEYS: the entry. ARGV: token, digest, ttl_ms. -> nil (claimed) | {digest, answer or nil}
_CLAIM: Final = """
local e = redis.call('HMGET', KEYS[1], 'd', 'a')
if e[1] then return e end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""
# KEYS: the entry. ARGV: token, answer, ttl_ms. -> 1, or 0 when the token no longer holds it.
_FINISH: Final = """
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'a', ARGV[2])
redis.call('HDEL', KEYS[1], 't')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS: the entry. ARGV: token. -> 1, or 0 when the token no longer holds it.
_RELEASE: Final = """
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

_encode_answer = msgspec.msgpack.Encoder().encode
_decode_answer = msgspec.msgpack.Decoder(Answer).decode
_FAILURES: Final = (RedisError, OSError, TimeoutError)


class RedisStore:
    """A hash per key at `<namespace>:idem:v1:{<key_id>}:<key>` (the limits' hash tag: one
    Redis Cluster slot per API key): d = digest, t = token while in flight, a = answer."""

    __slots__ = ("_claim", "_finish", "_prefix", "_release", "timeout_s")

    def __init__(self, client: aioredis.Redis, namespace: str, *,
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self._prefix = f"{namespace}:idem:{FORMAT}:"
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self.timeout_s = timeout_s

    def redis_key(self, key_id: str, key: str) -> str:
        return f"{self._prefix}{{{key_id}}}:{key}"

    async def claim(
        self, key_id: str, key: str, digest: str, token: str, ttl_s: float
    ) -> Seen | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                found = await self._claim(keys=[self.redis_key(key_id, key)],
                                          args=[token, digest, max(1, int(ttl_s * 1000))])
        except _FAILURES as e:
            # Without the store the key's promise cannot be kept: refuse rather than risk
            # sending a repeat upstream. (Requests without the header are not affected.)
            log.warning("idempotency: Redis claim failed: %r", e)
            raise ServiceUnavailable(
                "Idempotency keys cannot be checked right now; retry shortly.",
                code="idempotency_unavailable", headers={"retry-after": "1"},
            ) from None
        if found is None:
            return None
        digest_raw, answer_raw = found
        try:
            answer = _decode_answer(answer_raw) if answer_raw is not None else None
        except msgspec.DecodeError:  # not ours (FORMAT is in the key): answer, never a 500
            # the key is the client's header value: logged by its digest, never as sent
            log.warning("idempotency: an undecodable answer for key %s (sha256 %s)", key_id,
                        hashlib.sha256(key.encode()).hexdigest()[:16])
            raise ServiceUnavailable("The stored answer of this idempotency key is unreadable.",
                                     code="idempotency_unavailable") from None
        return Seen(digest_raw.decode(), answer)

    async def finish(self, key_id: str, key: str, token: str, answer: Answer, ttl_s: float) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                kept = await self._finish(
                    keys=[self.redis_key(key_id, key)],
                    args=[token, _encode_answer(answer), max(1, int(ttl_s * 1000))])
        except _FAILURES as e:  # kept or not: the release that follows is a no-op if it was
            log.warning("idempotency: Redis could not keep an answer: %r", e)
            return False
        return bool(kept)

    async def release(self, key_id: str, key: str, token: str) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._release(keys=[self.redis_key(key_id, key)], args=[token])
        except _FAILURES as e:  # the claim lapses: repeats get 409 until then
            log.warning("idempotency: Redis could not give a key back: %r", e)
