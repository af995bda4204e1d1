"""POST /v1/chat/completions: decode, authorize, admit, route, relay, record.

The handler reads top to bottom. A stream's response headers go out only once the first
upstream event is in hand, so every failure before that can still fall back to another
model or become a clean error status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from msgspec import Raw

from .. import tokens
from ..auth import PRINCIPAL
from ..cache import (
    CachedCompletion,
    IncompleteStream,
    completion_from_body,
    completion_from_stream_chunks,
)
from ..catalog import Model, ModelNotFound, Usage
from ..errors import ApiError, InvalidRequest
from ..gateway import GATEWAY, Gateway
from ..idempotency import Once, replay_answer
from ..ledger.record import UsageRecord
from ..limits import Admission
from ..providers.base import ChatCall, Completion
from ..router import Route
from ..routing import AttemptLog
from ..wire import (
    MAX_TOKENS,
    Message,
    RequestyMeta,
    StreamOptions,
    decode_body,
    field,
    required,
)
from .common import CLIENT_REQUEST_ID, REQUEST_ID, read_body, requesty_headers
from .inflight import INFLIGHT
from .relay import (
    STATUS_CLIENT_GONE,
    OpenStream,
    Outcome,
    StreamBroke,
    completion_response,
    open_stream,
    pipe,
    replay,
)

log = logging.getLogger("proxy.usage")

ROUTE: Final = "chat"
# Fields the gateway consumes; they never reach a provider.
_GATEWAY_FIELDS: Final = ("requesty", "models")


class ChatRequest:
    """The validated parts of a chat request that routing and accounting need."""

    __slots__ = (
        "fallbacks",
        "fields",
        "headers",
        "include_usage",
        "max_tokens",
        "messages",
        "meta",
        "model_id",
        "stream",
    )

    def __init__(self, fields: dict[str, Raw], default_model: str,
                 headers: dict[str, str] | None = None) -> None:
        self.model_id: str = field(fields, "model", str) or default_model
        self.fallbacks: list[str] | None = field(fields, "models", list[str])
        self.messages: list[Message] = required(fields, "messages", list[Message])
        if not self.messages:
            raise InvalidRequest("`messages` must contain at least one message.", param="messages")
        self.stream: bool = field(fields, "stream", bool | None) or False
        opts = field(fields, "stream_options", StreamOptions | None)
        self.include_usage = bool(opts and opts.include_usage)
        cap = "max_completion_tokens"
        self.max_tokens: int | None = field(fields, cap, int | None)
        if self.max_tokens is None:
            cap = "max_tokens"
            self.max_tokens = field(fields, cap, int | None)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_TOKENS:
            raise InvalidRequest(f"`{cap}` must be between 1 and {MAX_TOKENS}.", param=cap)
        self.meta: RequestyMeta = field(fields, "requesty", RequestyMeta | None) or RequestyMeta()
        self.headers = headers or {}  # X-Requesty-*, validated by the caller
        if any(name in fields for name in _GATEWAY_FIELDS):
            fields = {k: v for k, v in fields.items() if k not in _GATEWAY_FIELDS}
        self.fields = fields

    def call(self, model: Model) -> ChatCall:
        return ChatCall(model, self.fields, self.messages, self.stream, self.max_tokens,
                        self.meta.auto_cache)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started = time.monotonic()
    arrived = datetime.now(UTC)
    body = await read_body(request, gw.settings.max_body_bytes)
    req = ChatRequest(decode_body(body), gw.settings.default_model, requesty_headers(request))
    route = gw.router.resolve(req.model_id, req.fallbacks)
    principal = request[PRINCIPAL]
    # An Idempotency-Key's repeat is answered here, before admission: 409 while the first
    # is in flight, 422 for another body, the kept answer once it ended (never charged).
    once = await gw.idempotency.begin(request, principal.key_id, ROUTE, body)
    if once is not None and once.replay is not None:
        return await replay_answer(request, once.replay, req.include_usage)
    prompt_estimate = tokens.prompt_tokens(req.messages)
    try:
        admission = await gw.limits.admit(
            principal,
            request[REQUEST_ID],
            max(m.worst_case_cost(prompt_estimate, req.max_tokens) for m in route.models),
            prompt_estimate + (req.max_tokens or route.models[0].max_output_tokens),
        )
    except BaseException:
        if once is not None:
            await once.close()  # refused: the key is free for a retry
        raise
    flight = request.app[INFLIGHT]
    ticket = flight.begin(request, admission, route.models[0], req.model_id, prompt_estimate,
                          req.stream, req.meta, arrived)
    outcome = Outcome(route.models[0], started)
    outcome.headers = admission.headers
    with gw.metrics.in_flight(ROUTE):
        try:
            cache_key = None
            if gw.cache.wanted(req.model_id, request_flag=req.meta.cache,
                               header=request.headers.get("x-cache"), key_flag=principal.cache):
                cache_key = gw.cache.key(principal.owner, req.model_id, req.fields, req.fallbacks)
                hit = await gw.cache.get(cache_key)
                gw.metrics.cache_lookup(ROUTE, hit is not None)
                if hit is not None:
                    _note_hit(gw, outcome, hit)
                    response = await replay(request, hit, outcome, req.stream, req.include_usage)
                    if once is not None:
                        await (once.keep_cached(hit, outcome.model) if req.stream
                               else once.keep_json(response, outcome.model))
                    return response
            if req.stream:
                return await _stream(request, gw, req, route, outcome, cache_key, once)
            return await _complete(request, gw, req, route, outcome, cache_key, once)
        except StreamBroke as broke:
            return broke.response
        except ApiError as e:
            outcome.status = e.status
            outcome.error_code = e.code
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            outcome.status = STATUS_CLIENT_GONE
            outcome.error_code = "client_disconnected"
            raise
        except Exception:
            outcome.status = 500  # what the edge middleware will answer
            outcome.error_code = "internal_error"
            raise
        finally:
            _account(request, gw, req, outcome, admission, arrived)
            flight.end(ticket)
            if once is not None:
                await once.close()  # no complete answer kept: the key is free for a retry


async def _complete(
    request: web.Request, gw: Gateway, req: ChatRequest, route: Route, outcome: Outcome,
    cache_key: str | None, once: Once | None,
) -> web.Response:
    async def attempt(model: Model) -> Completion:
        return await gw.provider(model.provider).chat(req.call(model))

    log = AttemptLog()
    began = time.monotonic()
    try:
        completion = await gw.routing.run(gw.routing.plan(route, req.meta), attempt, log,
                                          deadline_s=route.deadline_s)
    finally:
        # Upstream time includes failed attempts and back-off waits: not gateway overhead.
        outcome.upstream_s = time.monotonic() - began
        _note_attempts(gw, outcome, log)
    if completion.usage is not None:  # what the client is shown is what is charged
        outcome.usage, outcome.text_chars = completion.usage, completion.text_chars
        completion.usage = settle_usage(outcome, req)
    gw.routing.observe(log, (completion.usage or Usage()).completion_tokens, stream=False)
    response = completion_response(request, completion, outcome)
    if cache_key is not None:
        await gw.cache.store(cache_key, completion_from_body(
            completion.payload, completion.usage, model=outcome.model.id,
            provider=outcome.model.provider))
    if once is not None:
        await once.keep_json(response, outcome.model)
    return response


async def _stream(
    request: web.Request, gw: Gateway, req: ChatRequest, route: Route, outcome: Outcome,
    cache_key: str | None, once: Once | None,
) -> web.StreamResponse:
    async def attempt(model: Model) -> OpenStream:
        provider = gw.provider(model.provider)
        return await open_stream(provider.stream, req.call(model),
                                 provider.config.first_byte_timeout_s)

    log = AttemptLog()
    began = time.monotonic()
    try:
        opened = await gw.routing.run(gw.routing.plan(route, req.meta), attempt, log,
                                      deadline_s=route.deadline_s)
    finally:
        outcome.upstream_s = time.monotonic() - began  # to the first event, as TTFT is
        _note_attempts(gw, outcome, log)
    outcome.ttft_ms = (time.monotonic() - outcome.started) * 1000
    keep: list[bytes] | None = [] if cache_key is not None or once is not None else None
    gw.metrics.stream_opened()
    try:
        response = await pipe(request, opened, outcome, req.include_usage,
                              lambda: settle_usage(outcome, req), keep)
    except StreamBroke as broke:
        gw.routing.stream_failed(log, broke.error)
        raise
    finally:
        gw.metrics.stream_closed()
    if outcome.usage is not None:  # untrue counts never reach the cache or the routing stats
        settle_usage(outcome, req)
    gw.routing.observe(log, (outcome.usage or Usage()).completion_tokens, stream=True)
    if once is not None and keep is not None:
        cost = outcome.model.cost(settle_usage(outcome, req))  # as `_account` charges
        await once.keep_stream(keep, opened[0], outcome.model, cost)
    if keep is not None and cache_key is not None:
        try:
            cached = completion_from_stream_chunks(keep, outcome.usage, model=outcome.model.id,
                                                   provider=outcome.model.provider)
        except IncompleteStream:
            return response  # a partial answer is never cached
        await gw.cache.store(cache_key, cached)
    return response


def _note_attempts(gw: Gateway, outcome: Outcome, log: AttemptLog) -> None:
    outcome.attempts = log.attempts
    if log.model is not None:
        outcome.model = log.model
    gw.metrics.attempts_done(log)


def _note_hit(gw: Gateway, outcome: Outcome, hit: CachedCompletion) -> None:
    outcome.cache_hit = True
    outcome.attempts = 0
    outcome.usage = hit.usage()
    outcome.finish_reason = hit.finish_reason
    try:
        outcome.model = gw.catalog.get(hit.model)  # the savings are priced on who answered
    except ModelNotFound:
        pass


def settle_usage(outcome: Outcome, req: ChatRequest) -> Usage:
    """The provider's usage, or an estimate when it reported none (never 0 if text flowed)
    or counts that cannot be true (negative, past the context window or the output cap):
    the provider's numbers never make a cost negative or out of range."""
    reported = outcome.usage
    if reported is not None and (reported.estimated  # ours already
                                 or outcome.model.plausible(reported, req.max_tokens)):
        return reported
    usage = Usage(
        prompt_tokens=tokens.prompt_tokens(req.messages),
        completion_tokens=tokens.text_tokens(outcome.text_chars),
        estimated=True,
    )
    if reported is not None:
        log.warning("provider %s reported implausible usage for %s (prompt %d, completion "
                    "%d, cached %d); estimated instead", outcome.model.provider,
                    outcome.model.id, reported.prompt_tokens, reported.completion_tokens,
                    reported.cached_tokens)
        outcome.usage = usage  # the same answer for every later look (record, cache)
    return usage


def _account(
    request: web.Request, gw: Gateway, req: ChatRequest, outcome: Outcome,
    admission: Admission, arrived: datetime,
) -> None:
    """Settle the spend, count the metrics, hand the record to the ledger: never awaited."""
    if outcome.usage is None and not outcome.text_chars and outcome.status >= 400:
        usage = Usage()  # failed before any text: nothing to charge
    else:
        usage = settle_usage(outcome, req)
    model = outcome.model
    value = model.cost(usage)
    cost, savings = (0, value) if outcome.cache_hit else (value, 0)
    gw.limits.settle(admission, cost, usage.total_tokens)
    record = UsageRecord(
        request_id=request[REQUEST_ID],
        ts=arrived,
        key_id=request[PRINCIPAL].key_id,
        model_requested=req.model_id,
        model=model.id,
        provider=model.provider,
        region=gw.region,
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        error_code=outcome.error_code,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_nusd=cost,
        savings_nusd=savings,
        latency_ms=(time.monotonic() - outcome.started) * 1000,
        ttft_ms=outcome.ttft_ms,
        stream=req.stream,
        cache_hit=outcome.cache_hit,
        attempts=outcome.attempts,
        estimated=usage.estimated,
        user_id=req.meta.user_id,
        trace_id=req.meta.trace_id,
        tags=req.meta.tags,
        extra=req.meta.extra,
        headers=req.headers,
        client_request_id=request[CLIENT_REQUEST_ID],
    )
    gw.metrics.request_done(ROUTE, record, outcome.upstream_s)
    gw.ledger.enqueue(record)
