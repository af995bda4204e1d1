"""Idempotent requests (`Idempotency-Key`), with Stripe's semantics.

A client that may retry a request sends `Idempotency-Key: <1 to 255 printable ASCII
characters>`. The key is scoped to the API key that sent it (two API keys never share
one), and bound to the request it first came with: the route and the body, compared as
JSON (key order and whitespace do not matter, every field does).

- First use: the key is claimed (in flight), and the request goes on as any other: it is
  admitted against the spend limit, routed, relayed and charged.
- A repeat while the first is in flight: 409 `idempotency_in_progress` (`retry-after: 1`);
  nothing is admitted, sent upstream, charged or recorded.
- A repeat after the first ended with a complete answer: that answer is replayed (a JSON
  answer byte for byte; a stream as the same content re-chunked, as the response cache
  replays one) with `Idempotent-Replayed: true`. Nothing is admitted, sent upstream or
  charged, and no usage record is written: the first request's record holds the spend,
  so the ledger and the spend counter stay equal.
- The same key with another body (or on another route): 422 `idempotency_key_reused`.
- A first request that did not end with a complete answer (refused, failed upstream, cut
  stream, client gone) gives its key back: a retry runs again, and meets the limit test
  again. No path admits a request without the limit test (`proxy/limits` has no sharing).
- A malformed header: 400 `invalid_idempotency_key`, `param` = `Idempotency-Key`.

Answers are kept `[idempotency] retention_s` (24 h) after the request ended. A claim whose
request never ends (a crashed worker) lapses after `[limits] reservation_ttl_s`, the
gateway's bound on a request's length. With Redis the keys are shared by every worker and
instance; without it (the embedded default) they live in the process, bounded by
`[idempotency] max_bytes`, oldest answers dropped first.

- `request.py`: the header's bounds, the body digest.
- `store.py`: `Answer`, the in-process and Redis stores.
- `guard.py`: `Idempotency` (one per process, on the gateway) and `Once` (one request's claim).
- `replay.py`: serving a stored answer.
"""

from .guard import Idempotency, Once
from .replay import replay_answer, replay_json
from .request import HEADER, MAX_KEY_CHARS
from .store import Answer, IdempotencyStore, MemoryStore, RedisStore

__all__ = [
    "HEADER",
    "MAX_KEY_CHARS",
    "Answer",
    "Idempotency",
    "IdempotencyStore",
    "MemoryStore",
    "Once",
    "RedisStore",
    "replay_answer",
    "replay_json",
]
