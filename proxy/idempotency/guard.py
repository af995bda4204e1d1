"""`Idempotency`: the one object a handler asks about an `Idempotency-Key`; `Once`: the
claim of one request, which keeps its answer or gives the key back.

In a handler, after the body is decoded and before admission:

    once = await gw.idempotency.begin(request, principal.key_id, ROUTE, body)
    if once is not None and once.replay is not None:
        return await replay_answer(request, once.replay, include_usage)
    ...admit (on refusal: await once.close()), route, relay...
    ...a complete answer: await once.keep_json(response, model) before returning it,
       or await once.keep_stream(payloads, stream, model, cost) after a stream's end,
       or await once.keep_cached(hit, model) for a cache hit served as a stream
    finally: await once.close()   # gives the key back unless an answer was kept
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from ..api.common import REQUEST_ID
from ..cache import CachedCompletion, IncompleteStream, completion_from_stream_chunks
from ..catalog import Model
from ..config import Settings
from ..errors import IdempotencyInProgress, IdempotencyKeyReused
from ..providers.base import ChatStream
from .request import HEADER, HEADER_KEY, body_digest, header_key
from .store import Answer, IdempotencyStore, MemoryStore, RedisStore

_encode = msgspec.json.encode


class Idempotency:
    __slots__ = ("in_flight_s", "retention_s", "store")

    def __init__(self, store: IdempotencyStore, *, retention_s: float, in_flight_s: float) -> None:
        self.store = store
        self.retention_s = retention_s  # how long a complete answer is replayed
        self.in_flight_s = in_flight_s  # when a claim whose request never ended lapses

    @classmethod
    def for_settings(cls, settings: Settings, redis: aioredis.Redis | None) -> Idempotency:
        """In Redis when the gateway has one (shared by every worker), else in the process.
        A claim lapses after the limits' `reservation_ttl_s`: longer than any request."""
        store: IdempotencyStore
        if redis is not None:
            store = RedisStore(redis, settings.redis_namespace)
        else:
            store = MemoryStore(settings.idempotency.max_bytes)
        return cls(store, retention_s=settings.idempotency.retention_s,
                   in_flight_s=settings.limits.reservation_ttl_s)

    async def begin(
        self, request: web.Request, key_id: str, route: str, body: bytes
    ) -> Once | None:
        """None without the header. Otherwise the request's claim on its key, or the answer
        to replay; 409 while the key's first request is in flight, 422 for another body."""
        headers = request.headers
        if HEADER_KEY not in headers:  # the common case: one lookup
            return None
        key = header_key(headers)
        if key is None:
            return None
        digest = body_digest(route, body)
        token = request[REQUEST_ID]
        seen = await self.store.claim(key_id, key, digest, token, self.in_flight_s)
        if seen is None:
            return Once(self, key_id, key, token)
        if seen.digest != digest:
            raise IdempotencyKeyReused(
                f"This `{HEADER}` was used with a different request; use a new key for a "
                "new request.", param=HEADER)
        if seen.answer is None:
            raise IdempotencyInProgress(
                f"A request with this `{HEADER}` is still in flight; retry after it ends.",
                param=HEADER, headers={"retry-after": "1"})
        return Once(self, key_id, key, token, replay=seen.answer)


class Once:
    """One request's hold on its idempotency key (or, with `replay`, the answer it gets)."""

    __slots__ = ("_ended", "_idempotency", "key", "key_id", "replay", "token")

    def __init__(self, idempotency: Idempotency, key_id: str, key: str, token: str,
                 replay: Answer | None = None) -> None:
        self._idempotency = idempotency
        self.key_id = key_id
        self.key = key
        self.token = token
        self.replay = replay
        self._ended = replay is not None  # a replay holds no claim

    async def keep_json(self, response: web.StreamResponse, model: Model) -> None:
        """Keep a complete JSON answer (call it before the response goes out, so that a
        repeat sent the moment the client has it finds it)."""
        if (isinstance(response, web.Response) and response.status == 200
                and isinstance(response.body, bytes)):
            await self._keep(Answer(model=model.id, provider=model.provider, body=response.body))

    async def keep_stream(
        self, chunks: list[bytes], stream: ChatStream, model: Model, cost_nusd: int
    ) -> None:
        """Keep a stream that reached its end (`chunks`: its payloads as the client got them)
        with the provider's usage chunk and what it cost (the replay's usage chunk shows it)."""
        if stream.usage_chunk is not None:
            chunks = [*chunks, _encode(stream.usage_chunk)]
        try:
            completion = completion_from_stream_chunks(chunks, stream.usage, model=model.id,
                                                       provider=model.provider)
        except IncompleteStream:
            return  # a cut answer is not kept: `close` gives the key back
        await self._keep(Answer(model=model.id, provider=model.provider, stream=completion,
                                cost_nusd=cost_nusd, usage_chunk=stream.usage_chunk is not None))

    async def keep_cached(self, hit: CachedCompletion, model: Model) -> None:
        """Keep a response-cache hit that was served as a stream (it cost nothing)."""
        await self._keep(Answer(model=model.id, provider=model.provider, stream=hit))

    async def _keep(self, answer: Answer) -> None:
        if self._ended:
            return
        idem = self._idempotency
        # Ended only once kept: if the keep failed or was cancelled half way, `close` gives
        # the key back (a no-op when the store had kept it after all: it is token-bound).
        self._ended = await idem.store.finish(self.key_id, self.key, self.token, answer,
                                              idem.retention_s)

    async def close(self) -> None:
        """Give the key back unless an answer was kept: a retry then runs (and is admitted
        against the limit) again."""
        if self._ended:
            return
        self._ended = True
        await self._idempotency.store.release(self.key_id, self.key, self.token)
