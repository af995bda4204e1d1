"""POST /v1/chat/completions: decode, authorize, route, relay, record.

The handler reads top to bottom. A stream's response headers go out only once the first
upstream event is in hand, so every failure before that can still become a clean error
status (and, with the routing issue, a fallback).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web
from msgspec import Raw

from .. import tokens
from ..auth import PRINCIPAL
from ..catalog import Model, Usage, nano_to_usd
from ..errors import ApiError, InvalidRequest, UpstreamError, UpstreamTimeout
from ..gateway import GATEWAY, Gateway
from ..ledger.record import UsageRecord
from ..limits import Admission
from ..providers.base import ChatCall, ChatStream
from ..wire import Message, RequestyMeta, StreamOptions, decode_body, field, required
from .common import REQUEST_ID, read_body, requesty_headers

_encode = msgspec.json.encode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
# Fields the gateway consumes; they never reach a provider.
_GATEWAY_FIELDS: Final = ("requesty", "models")
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies in front not to buffer
}
_DONE: Final = b"data: [DONE]\n\n"
STATUS_CLIENT_GONE: Final = 499


class ChatRequest:
    """The validated parts of a chat request that routing and accounting need."""

    __slots__ = (
        "fallbacks",
        "fields",
        "include_usage",
        "max_tokens",
        "messages",
        "meta",
        "model_id",
        "stream",
    )

    def __init__(self, fields: dict[str, Raw], default_model: str) -> None:
        self.model_id: str = field(fields, "model", str) or default_model
        self.fallbacks: list[str] | None = field(fields, "models", list[str])
        self.messages: list[Message] = required(fields, "messages", list[Message])
        if not self.messages:
            raise InvalidRequest("`messages` must contain at least one message.", param="messages")
        self.stream: bool = field(fields, "stream", bool | None) or False
        opts = field(fields, "stream_options", StreamOptions | None)
        self.include_usage = bool(opts and opts.include_usage)
        self.max_tokens: int | None = field(fields, "max_completion_tokens", int | None)
        if self.max_tokens is None:
            self.max_tokens = field(fields, "max_tokens", int | None)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("`max_tokens` must be at least 1.", param="max_tokens")
        self.meta: RequestyMeta = field(fields, "requesty", RequestyMeta | None) or RequestyMeta()
        if any(name in fields for name in _GATEWAY_FIELDS):
            fields = {k: v for k, v in fields.items() if k not in _GATEWAY_FIELDS}
        self.fields = fields


class Outcome:
    """What one request came to: filled in as the relay goes, read by accounting."""

    __slots__ = (
        "attempts",
        "error_code",
        "finish_reason",
        "headers",
        "model",
        "started",
        "status",
        "text_chars",
        "ttft_ms",
        "usage",
    )

    def __init__(self, model: Model, started: float) -> None:
        self.model = model
        self.started = started
        self.status = 200
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.text_chars = 0
        self.ttft_ms: float | None = None
        self.attempts = 0
        self.error_code: str | None = None
        self.headers: dict[str, str] = {}  # extra response headers (rate-limit state)


def served_by(
    request: web.Request, model: Model, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Response headers naming the model and provider that answered (fallbacks included)."""
    headers = {"x-request-id": request[REQUEST_ID], "x-model": model.id, "x-provider": model.provider}
    if extra:
        headers.update(extra)
    return headers


def usage_with_cost(raw: Raw | None, usage: Usage, cost_nusd: int) -> Raw:
    """The client-facing `usage` object: the provider's own (details kept) plus `cost`."""
    body: dict[str, Any] = _decode_dict(raw) if raw else {}
    body.setdefault("prompt_tokens", usage.prompt_tokens)
    body.setdefault("completion_tokens", usage.completion_tokens)
    body.setdefault("total_tokens", usage.total_tokens)
    if usage.cached_tokens and "prompt_tokens_details" not in body:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    body["cost"] = nano_to_usd(cost_nusd)
    return Raw(_encode(body))


def settle_usage(outcome: Outcome, messages: list[Message]) -> Usage:
    """The provider's usage, or an estimate when it reported none (never 0 if text flowed)."""
    if outcome.usage is not None:
        return outcome.usage
    completion = tokens.text_tokens(outcome.text_chars)
    return Usage(
        prompt_tokens=tokens.prompt_tokens(messages), completion_tokens=completion, estimated=True
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started = time.monotonic()
    arrived = datetime.now(UTC)
    req = ChatRequest(decode_body(await read_body(request, gw.settings.max_body_bytes)),
                      gw.settings.default_model)
    route = gw.router.resolve(req.model_id, req.fallbacks)
    prompt_estimate = tokens.prompt_tokens(req.messages)
    admission = await gw.limits.admit(
        request[PRINCIPAL],
        request[REQUEST_ID],
        request.headers.get("Idempotency-Key"),
        max(m.worst_case_cost(prompt_estimate, req.max_tokens) for m in route.models),
        prompt_estimate + (req.max_tokens or route.models[0].max_output_tokens),
    )
    outcome = Outcome(route.models[0], started)
    outcome.headers = admission.headers
    try:
        return await _relay(request, gw, req, route.models, outcome)
    except ApiError as e:
        outcome.status = e.status
        outcome.error_code = e.code
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        outcome.status = STATUS_CLIENT_GONE
        outcome.error_code = "client_disconnected"
        raise
    finally:
        _account(request, gw, req, outcome, admission, arrived, started)


async def _relay(
    request: web.Request, gw: Gateway, req: ChatRequest, models: list[Model], outcome: Outcome
) -> web.StreamResponse:
    last_error: UpstreamError | None = None
    for model in models:
        outcome.model = model
        outcome.attempts += 1
        provider = gw.provider(model.provider)
        call = ChatCall(model, req.fields, req.messages, req.stream, req.max_tokens,
                        req.meta.auto_cache)
        try:
            if not req.stream:
                return await _complete(request, provider.chat, call, outcome)
            stream, events, first = await _open_stream(
                provider.stream, call, provider.config.first_byte_timeout_s
            )
            outcome.ttft_ms = (time.monotonic() - outcome.started) * 1000
        except UpstreamError as e:
            last_error = e
            if not e.retryable:
                raise
            continue
        return await _pipe(request, req, stream, events, first, outcome)
    assert last_error is not None
    raise last_error


async def _complete(request: web.Request, send: Any, call: ChatCall, outcome: Outcome) -> web.Response:
    completion = await send(call)
    outcome.usage = completion.usage
    outcome.finish_reason = completion.finish_reason
    outcome.text_chars = completion.text_chars
    usage = completion.usage or Usage()
    cost = call.model.cost(usage)
    payload = completion.payload
    payload["usage"] = usage_with_cost(payload.get("usage"), usage, cost)
    return web.Response(
        body=_encode(payload),
        content_type="application/json",
        headers=served_by(request, call.model, outcome.headers),
    )


async def _open_stream(
    open_: Any, call: ChatCall, first_byte_s: float
) -> tuple[ChatStream, AsyncIterator[bytes], bytes | None]:
    """Open the upstream stream and wait for its first event, within the first-byte timeout."""
    stream: ChatStream | None = None
    try:
        async with asyncio.timeout(first_byte_s):
            stream = await open_(call)
            events = aiter(stream)
            first = await anext(events, None)
    except TimeoutError:
        if stream is not None:
            await stream.aclose()
        raise UpstreamTimeout(
            f"Upstream model `{call.model.id}` sent no first token within {first_byte_s:g} s.",
            reason="first_byte_timeout",
        ) from None
    return stream, events, first


async def _pipe(
    request: web.Request,
    req: ChatRequest,
    stream: ChatStream,
    events: AsyncIterator[bytes],
    first: bytes | None,
    outcome: Outcome,
) -> web.StreamResponse:
    """Write each upstream event as it comes; a slow client slows the upstream read."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, **served_by(request, outcome.model, outcome.headers)})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(b"data: " + first + b"\n\n")
            async for payload in events:
                await response.write(b"data: " + payload + b"\n\n")
    except UpstreamError as e:
        outcome.status = 502
        outcome.error_code = e.code
        await response.write(b"data: " + e.body() + b"\n\n")
        _collect(stream, outcome)
        return response
    except BaseException:
        await stream.aclose()
        _collect(stream, outcome)
        raise
    _collect(stream, outcome)
    if req.include_usage and stream.usage_chunk is not None:
        usage = settle_usage(outcome, req.messages)
        chunk = stream.usage_chunk
        chunk["usage"] = usage_with_cost(chunk.get("usage"), usage, outcome.model.cost(usage))
        await response.write(b"data: " + _encode(chunk) + b"\n\n")
    await response.write(_DONE)
    await response.write_eof()
    return response


def _collect(stream: ChatStream, outcome: Outcome) -> None:
    outcome.usage = stream.usage
    outcome.finish_reason = stream.finish_reason
    outcome.text_chars = stream.text_chars


def _account(
    request: web.Request, gw: Gateway, req: ChatRequest, outcome: Outcome,
    admission: Admission, arrived: datetime, started: float,
) -> None:
    """Settle the spend, write the ledger record: after the response, never awaited."""
    if outcome.usage is None and not outcome.text_chars and outcome.status >= 400:
        usage = Usage()  # failed before any text: nothing to charge
    else:
        usage = settle_usage(outcome, req.messages)
    model = outcome.model
    cost = model.cost(usage)
    gw.limits.settle(admission, cost, usage.total_tokens)
    principal = request[PRINCIPAL]
    record = UsageRecord(
        request_id=request[REQUEST_ID],
        ts=arrived,
        key_id=principal.key_id,
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
        latency_ms=(time.monotonic() - started) * 1000,
        ttft_ms=outcome.ttft_ms,
        stream=req.stream,
        attempts=outcome.attempts,
        estimated=usage.estimated,
        user_id=req.meta.user_id,
        trace_id=req.meta.trace_id,
        tags=req.meta.tags,
        extra=req.meta.extra,
        headers=requesty_headers(request),
    )
    gw.ledger.enqueue(record)
