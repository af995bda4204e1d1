"""The usage record: one per request that reaches routing, success or not."""

from __future__ import annotations

from datetime import datetime

import msgspec


class UsageRecord(msgspec.Struct, kw_only=True):
    request_id: str  # the gateway's own id: unique, the ledger's idempotency key
    ts: datetime  # when the request arrived, UTC (timezone-aware)
    key_id: str
    model_requested: str  # what the client sent (a model id or policy/<name>)
    model: str  # the model that served (or was last tried)
    provider: str
    region: str
    status: int  # HTTP status the client got
    finish_reason: str | None = None
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_nusd: int = 0  # what was charged, integer nano-USD
    savings_nusd: int = 0  # what a response-cache hit would have cost
    latency_ms: float = 0.0
    ttft_ms: float | None = None  # time to first token (streams)
    stream: bool = False
    cache_hit: bool = False
    attempts: int = 1
    estimated: bool = False  # tokens counted by the gateway, not reported by the provider
    user_id: str | None = None
    trace_id: str | None = None
    tags: list[str] = []
    extra: dict[str, str] = {}
    # X-Requesty-* request headers, name lower-cased without the prefix
    headers: dict[str, str] = {}
    # The client's own X-Request-Id, echoed on the response. Kept apart from request_id:
    # a client that reuses an id must not have its later records dropped as duplicates.
    client_request_id: str | None = None
    # The client dialect's route: chat, messages, responses, completions, embeddings.
    route: str = "chat"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
