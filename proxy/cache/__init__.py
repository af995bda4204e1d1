"""The response cache: exact-match answers per owner, in Redis or in-process.

- `key.cache_requested(...)` / `key.cache_key(owner, model_id, fields, fallbacks)`: who
  opts in, and the sha256 naming a request's answer.
- `completion.CachedCompletion` and its makers `completion_from_body` (non-streamed) and
  `completion_from_stream_chunks` (streamed; refuses an unfinished stream), and the ways
  to serve a hit: `response_body` (JSON) and `replay_chunks` (SSE chunk payloads).
- `store.MemoryLRU` (bounded by bytes) and `store.RedisCache` (`<ns>:cache:<sha256>`).
- `lookup.ResponseCache`: the above behind four calls, one per process on the gateway.

In the chat handler, after decoding and admission, before routing:

    cache = gw.cache
    use_cache = cache.wanted(req.model_id, request_flag=req.meta.cache,
                             header=request.headers.get("x-cache"), key_flag=<key's flag>)
    if use_cache:
        key = cache.key(principal.owner, req.model_id, req.fields, req.fallbacks)
        hit = await cache.get(key)
        if hit is not None:
            # x-cache: HIT; cost 0; the record keeps hit.usage() priced on hit.model as savings
            body or stream = response_body(hit) / replay_chunks(hit, include_usage=...)
    ...after a successful answer (never an error, never a cut stream):
        await cache.store(key, completion_from_body(completion.payload, completion.usage,
                                                    model=model.id, provider=model.provider))
        # or, for a stream that reached [DONE]:
        await cache.store(key, completion_from_stream_chunks(payloads, stream.usage,
                                                             model=..., provider=...))
"""

from .completion import (
    CachedCompletion,
    IncompleteStream,
    completion_from_body,
    completion_from_stream_chunks,
    replay_chunks,
    response_body,
)
from .key import IGNORED_FIELDS, cache_key, cache_requested
from .lookup import ResponseCache
from .store import CacheStore, MemoryLRU, RedisCache

__all__ = [
    "IGNORED_FIELDS",
    "CacheStore",
    "CachedCompletion",
    "IncompleteStream",
    "MemoryLRU",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "cache_requested",
    "completion_from_body",
    "completion_from_stream_chunks",
    "replay_chunks",
    "response_body",
]
