"""One request of any dialect: decode, authorize, idempotency, admit, journal, route,
relay, record.

The handler reads top to bottom and is the same for every dialect; the `Dialect` it is
built with decodes the body, makes each upstream attempt and renders the answer. A
stream's response headers go out only once the first upstream event is in hand, so every
failure before that can still fall back to another model or become a clean error status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from .. import tokens
from ..auth import PRINCIPAL
from ..cache import CachedCompletion
from ..catalog import Model, ModelNotFound, Usage
from ..errors import ApiError
from ..gateway import GATEWAY, Gateway
from ..idempotency import Once
from ..idempotency.request import HEADER_KEY
from ..ledger.record import UsageRecord
from ..limits import Admission
from ..providers.base import Completion
from ..routing.resolve import Route
from ..routing import AttemptLog
from .common import CLIENT_REQUEST_ID, REQUEST_ID, read_body
from .dialect import Dialect, R
from .inflight import INFLIGHT
from .relay import (
    STATUS_CLIENT_GONE,
    OpenStream,
    Outcome,
    StreamBroke,
    open_stream,
    pipe,
)

log = logging.getLogger("proxy.usage")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(dialect: Dialect[R]) -> Handler:
    """The aiohttp handler of one dialect's route (a partial: no coroutine frame more)."""
    return functools.partial(serve, dialect=dialect)


async def serve(request: web.Request, dialect: Dialect[R]) -> web.StreamResponse:
    app = request.app
    gw = app[GATEWAY]
    started = time.monotonic()
    arrived = datetime.now(UTC)
    body = await read_body(request, gw.settings.max_body_bytes)
    req = dialect.decode(request, body, gw)
    route = gw.router.resolve(req.model_id, req.fallbacks)
    principal = request[PRINCIPAL]
    rid = request[REQUEST_ID]  # read once: each `request[...]` is a Python-level call
    label = dialect.route
    # An Idempotency-Key's repeat is answered here, before admission: 409 while the first
    # is in flight, 422 for another body, the kept answer once it ended (never charged).
    # Without the header (the common case) no coroutine is made just to say None.
    once = (await gw.idempotency.begin(request, principal.key_id, label, body)
            if HEADER_KEY in request.headers else None)
    if once is not None and once.replay is not None:
        return await dialect.replay_kept(request, req, once.replay)
    prompt_estimate = req.prompt_tokens()
    try:
        admission = await gw.limits.admit(
            principal,
            rid,
            max(m.worst_case_cost(prompt_estimate, req.max_tokens) for m in route.models),
            prompt_estimate + (req.max_tokens or route.models[0].max_output_tokens),
        )
    except BaseException:
        if once is not None:
            await once.close()  # refused: the key is free for a retry
        raise
    flight = app[INFLIGHT]
    client_rid = request[CLIENT_REQUEST_ID]
    ticket = flight.begin(request, admission, route.models[0], req.model_id, prompt_estimate,
                          req.stream, req.meta, arrived, label, rid, client_rid, req.headers)
    outcome = Outcome(route.models[0], started)
    outcome.headers = admission.headers
    with gw.metrics.in_flight(label):
        try:
            cache_key = None
            if gw.cache.wanted(req.model_id, request_flag=req.meta.cache,
                               header=request.headers.get("x-cache"), key_flag=principal.cache):
                cache_key = gw.cache.key(principal.owner, dialect.cache_scope(req), req.fields,
                                         req.fallbacks)
                hit = await gw.cache.get(cache_key)
                gw.metrics.cache_lookup(label, hit is not None)
                if hit is not None:
                    _note_hit(gw, outcome, hit)
                    response = await dialect.replay(request, req, hit, outcome)
                    if once is not None:
                        await (once.keep_cached(hit, outcome.model) if req.stream
                               else once.keep_json(response, outcome.model))
                    return response
            if req.stream:
                return await _stream(request, gw, dialect, req, route, outcome, cache_key, once)
            return await _complete(request, gw, dialect, req, route, outcome, cache_key, once)
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
            _account(gw, label, req, outcome, admission, arrived, rid, principal.key_id,
                     client_rid)
            flight.end(ticket)
            if once is not None:
                await once.close()  # no complete answer kept: the key is free for a retry


async def _complete(
    request: web.Request, gw: Gateway, dialect: Dialect[R], req: R, route: Route,
    outcome: Outcome, cache_key: str | None, once: Once | None,
) -> web.Response:
    # The dialect's coroutine is the attempt itself: no frame of ours around it.
    attempt: Callable[[Model], Awaitable[Completion]] = functools.partial(
        dialect.complete, gw, req)
    tried = AttemptLog()
    began = time.monotonic()
    try:
        completion = await gw.routing.run(gw.routing.plan(route, req.meta), attempt, tried,
                                          deadline_s=route.deadline_s)
    finally:
        # Upstream time includes failed attempts and back-off waits: not gateway overhead.
        outcome.upstream_s = time.monotonic() - began
        _note_attempts(gw, outcome, tried)
    if completion.usage is not None:  # what the client is shown is what is charged
        outcome.usage, outcome.text_chars = completion.usage, completion.text_chars
        completion.usage = settle_usage(outcome, req)
    gw.routing.observe(tried, (completion.usage or Usage()).completion_tokens, stream=False)
    response = dialect.respond(request, req, completion, outcome)
    if cache_key is not None:
        await gw.cache.store(cache_key, dialect.cache_entry(response, completion,
                                                            outcome.model))
    if once is not None:
        await once.keep_json(response, outcome.model)
    return response


async def _stream(
    request: web.Request, gw: Gateway, dialect: Dialect[R], req: R, route: Route,
    outcome: Outcome, cache_key: str | None, once: Once | None,
) -> web.StreamResponse:
    async def attempt(model: Model) -> OpenStream:
        provider = gw.provider(model.provider)
        # A partial, not a lambda: calling it makes no Python frame of its own.
        first_byte = gw.deadlines.after(provider.config.first_byte_timeout_s)
        return await open_stream(functools.partial(dialect.open, gw, req, model), model,
                                 first_byte)

    tried = AttemptLog()
    began = time.monotonic()
    try:
        opened = await gw.routing.run(gw.routing.plan(route, req.meta), attempt, tried,
                                      deadline_s=route.deadline_s)
    finally:
        outcome.upstream_s = time.monotonic() - began  # to the first event, as TTFT is
        _note_attempts(gw, outcome, tried)
    outcome.ttft_ms = (time.monotonic() - outcome.started) * 1000
    keep: list[bytes] | None = [] if cache_key is not None or once is not None else None
    gw.metrics.stream_opened()
    settle = functools.partial(settle_usage, outcome, req)
    try:
        response = await pipe(request, opened, outcome, req.include_usage, settle, keep)
    except StreamBroke as broke:
        gw.routing.stream_failed(tried, broke.error)
        raise
    finally:
        gw.metrics.stream_closed()
    if outcome.usage is not None:  # untrue counts never reach the cache or the routing stats
        settle_usage(outcome, req)
    gw.routing.observe(tried, (outcome.usage or Usage()).completion_tokens, stream=True)
    if keep is not None:
        await dialect.keep_stream(keep, opened[0], outcome, cache_key, once, gw, settle)
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


def settle_usage(outcome: Outcome, req: R) -> Usage:
    """The provider's usage, or an estimate when it reported none (never 0 if text flowed)
    or counts that cannot be true (negative, past the context window or the output cap):
    the provider's numbers never make a cost negative or out of range."""
    reported = outcome.usage
    if reported is not None and (reported is outcome.usage_checked  # looked at already
                                 or reported.estimated  # ours
                                 or outcome.model.plausible(reported, req.max_tokens)):
        outcome.usage_checked = reported
        return reported
    usage = Usage(
        prompt_tokens=req.prompt_tokens(),
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
    gw: Gateway, label: str, req: R, outcome: Outcome, admission: Admission,
    arrived: datetime, request_id: str, key_id: str, client_request_id: str | None,
) -> None:
    """Settle the spend, count the metrics, hand the record to the ledger: never awaited."""
    usage = outcome.usage
    if usage is not None and usage is outcome.usage_checked:
        pass  # settled already (`_complete`, the stream's end): no second call
    elif usage is None and not outcome.text_chars and outcome.status >= 400:
        usage = Usage()  # failed before any text: nothing to charge
    else:
        usage = settle_usage(outcome, req)
    model = outcome.model
    value = model.cost(usage)
    cost, savings = (0, value) if outcome.cache_hit else (value, 0)
    gw.limits.settle(admission, cost, usage.total_tokens)
    record = UsageRecord(
        request_id=request_id,
        ts=arrived,
        key_id=key_id,
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
        client_request_id=client_request_id,
        route=label,
    )
    gw.metrics.request_done(label, record, outcome.upstream_s)
    gw.ledger.enqueue(record)
