"""Relaying one chat answer to the client: a JSON body, a piped stream, or a cache replay.

`Outcome` is what the relay learned (model that served, usage, status, time to first
token); the chat handler turns it into spend, metrics and the usage record.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import msgspec
from aiohttp import web
from msgspec import Raw

from ..cache import CachedCompletion, replay_chunks, response_body
from ..catalog import Model, Usage, nano_to_usd
from ..compat.aiohttp_stream import EventStreamResponse, RawChunks
from ..deadline import Deadline
from ..errors import UpstreamError, UpstreamTimeout
from ..providers.base import ChatStream, Completion
from ..providers.sse import frame, payloads
from ..providers.wire import WireStream
from .common import echo_request_id

_encode = msgspec.json.encode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies in front not to buffer
}
DONE: Final = b"data: [DONE]\n\n"
STATUS_CLIENT_GONE: Final = 499
_CLIENT_HIGH_WATER: Final = 64 * 1024  # unsent bytes to the client that stop pushing

OpenStream = tuple[ChatStream, AsyncIterator[bytes], bytes | None]


class Outcome:
    """What one request came to: filled in as the relay goes, read by accounting."""

    __slots__ = (
        "attempts",
        "cache_hit",
        "error_code",
        "finish_reason",
        "headers",
        "model",
        "started",
        "status",
        "text_chars",
        "ttft_ms",
        "upstream_s",
        "usage",
        "usage_checked",
    )

    def __init__(self, model: Model, started: float) -> None:
        self.model = model
        self.started = started
        self.status = 200
        self.usage: Usage | None = None
        self.usage_checked: Usage | None = None  # the report found plausible, once
        self.finish_reason: str | None = None
        self.text_chars = 0
        self.ttft_ms: float | None = None
        self.attempts = 0
        self.error_code: str | None = None
        self.cache_hit = False
        self.upstream_s = 0.0  # time spent waiting on providers (for the overhead metric)
        self.headers: dict[str, str] = {}  # extra response headers (rate-limit state)

    def collect(self, stream: ChatStream) -> None:
        self.usage = stream.usage
        self.finish_reason = stream.finish_reason
        self.text_chars = stream.text_chars


def served_by(request: web.Request, outcome: Outcome) -> dict[str, str]:
    """Response headers naming the model and provider that answered (fallbacks included)."""
    model = outcome.model
    headers = {
        "x-request-id": echo_request_id(request), "x-model": model.id, "x-provider": model.provider,
    }
    if outcome.headers:
        headers.update(outcome.headers)
    return headers


# A provider's usage object that already names the three counts and no cost: `cost` is
# added to its bytes, not by decoding and encoding it (the common case, once a request).
# Looked for with `find`, not `in`: `bytes in bytes` first tries its argument as an int and
# formats and drops a TypeError (~1,800 instructions) before it searches.
_PROMPT: Final = b'"prompt_tokens"'
_COMPLETION: Final = b'"completion_tokens"'
_TOTAL: Final = b'"total_tokens"'
_COST: Final = b'"cost"'


def usage_with_cost(raw: Raw | None, usage: Usage, cost_nusd: int) -> Raw:
    """The client-facing `usage` object: the provider's own (details kept) plus `cost`."""
    if raw and not usage.estimated and not usage.cached_tokens:
        data = bytes(raw).rstrip()
        find = data.find
        if (data.endswith(b"}") and find(_COST) < 0 and find(_PROMPT) >= 0
                and find(_COMPLETION) >= 0 and find(_TOTAL) >= 0):
            cost = _encode(nano_to_usd(cost_nusd))
            return Raw(data[:-1] + b',"cost":' + cost + b"}")
    return _usage_decoded_with_cost(raw, usage, cost_nusd)


def _usage_decoded_with_cost(raw: Raw | None, usage: Usage, cost_nusd: int) -> Raw:
    body: dict[str, Any] = _decode_dict(raw) if raw else {}
    if usage.estimated:  # the provider's counts were not believed: show what was charged
        body.update(prompt_tokens=usage.prompt_tokens, total_tokens=usage.total_tokens,
                    completion_tokens=usage.completion_tokens, estimated=True)
    body.setdefault("prompt_tokens", usage.prompt_tokens)
    body.setdefault("completion_tokens", usage.completion_tokens)
    body.setdefault("total_tokens", usage.total_tokens)
    if usage.cached_tokens and "prompt_tokens_details" not in body:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    body["cost"] = nano_to_usd(cost_nusd)
    return Raw(_encode(body))


def completion_response(
    request: web.Request, completion: Completion, outcome: Outcome
) -> web.Response:
    outcome.usage = completion.usage
    outcome.finish_reason = completion.finish_reason
    outcome.text_chars = completion.text_chars
    usage = completion.usage or Usage()
    payload = dict(completion.payload)
    payload["usage"] = usage_with_cost(payload.get("usage"), usage, outcome.model.cost(usage))
    return web.Response(
        body=_encode(payload), content_type="application/json", headers=served_by(request, outcome)
    )


async def open_stream(
    open_: Callable[[], Awaitable[ChatStream]], model: Model, first_byte: Deadline,
) -> OpenStream:
    """Open the upstream stream and wait for its first events, within the first-byte timeout.

    This is one routing attempt: a failure here can still fall back to another model.
    """
    stream: ChatStream | None = None
    try:
        async with first_byte:
            stream = await open_()
            events = aiter(stream)
            first = await anext(events, None)
    except TimeoutError:
        if stream is not None:
            await stream.aclose()
        raise UpstreamTimeout(
            f"Upstream model `{model.id}` sent no first token within {first_byte.delay:g} s.",
            reason="first_byte_timeout",
        ) from None
    except BaseException:  # a failed or cancelled attempt must not leak its connection
        if stream is not None:
            await stream.aclose()
        raise
    return stream, events, first


async def pipe(
    request: web.Request,
    opened: OpenStream,
    outcome: Outcome,
    include_usage: bool,
    settle: Callable[[], Usage],
    keep: list[bytes] | None = None,
) -> web.StreamResponse:
    """Write each upstream event as it comes; a slow client slows the upstream read.

    After the first write, the upstream connection's callback writes each read to the
    client itself (`ChatStream.push`): no task switch per read. A client that falls behind
    moves the rest to the task path, where each write waits for the client to drain.

    After the first byte there is no retry: an upstream failure becomes an SSE error event
    and the stream ends. `keep` collects the payloads (for the response cache).
    """
    stream, runs, first = opened
    response = EventStreamResponse(headers={**SSE_HEADERS, **served_by(request, outcome)})
    await response.prepare(request)
    try:
        if first is not None:
            if keep is not None:
                keep += payloads(first)
            if not stream.finished:  # else it all came in one read: it goes out with the end
                await response.write(first)
                first = None
                push = _pusher(request, response, keep)
                if push is not None:
                    await stream.push(push)  # until the end, or until the client falls behind
            async for events in runs:  # the rest, if any, a task switch a read
                if keep is not None:
                    keep += payloads(events)
                await response.write(events)
    except UpstreamError as e:
        outcome.collect(stream)
        outcome.status = 502
        outcome.error_code = e.code
        event = (stream.error_event(e) if isinstance(stream, WireStream)
                 else b"data: " + e.body() + b"\n\n")
        await response.write((first or b"") + event)
        raise StreamBroke(response, e) from None
    except BaseException:
        await stream.aclose()
        outcome.collect(stream)
        raise
    outcome.collect(stream)
    tail = DONE
    if stream.ends_itself:  # a `WireStream`
        tail = b""  # its own events end it (message_stop, response.completed)
    elif include_usage and stream.usage_chunk is not None:
        usage = settle()
        chunk = dict(stream.usage_chunk)
        chunk["usage"] = usage_with_cost(chunk.get("usage"), usage, outcome.model.cost(usage))
        tail = b"data: " + _encode(chunk) + b"\n\n" + DONE
    if first is not None:
        tail = first + tail
    await response.write_eof(tail)  # the usage chunk, [DONE] and the end: one write
    return response


def _pusher(
    request: web.Request, response: web.StreamResponse, keep: list[bytes] | None
) -> Callable[[bytes], bool] | None:
    """A sink that writes SSE bytes to the client from the upstream connection's callback,
    framed as the chunk aiohttp's writer would frame (the headers went out with the first
    write); False once the client's socket owes more than `_CLIENT_HIGH_WATER`, so the rest
    goes through `response.write`, whose drain waits for the client. None for a response
    that is not chunked (an HTTP/1.0 client): it stays on the task path.
    """
    raw = RawChunks.of(request, response)  # aiohttp's writer bypassed: `proxy/compat`
    if raw is None:
        return None

    def push(events: bytes) -> bool:
        if raw.closing:
            return False  # the client is gone: the next `response.write` raises it
        if keep is not None:
            keep.extend(payloads(events))
        return raw.write(events) <= _CLIENT_HIGH_WATER

    return push


class StreamBroke(Exception):
    """The upstream failed after the first byte; the error event was sent, the stream ends."""

    def __init__(self, response: web.StreamResponse, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.response = response
        self.error = error


async def replay(
    request: web.Request, hit: CachedCompletion, outcome: Outcome, stream: bool, include_usage: bool
) -> web.StreamResponse:
    """Serve a response-cache hit: the same body, or the same chunks with the same framing."""
    headers = {**served_by(request, outcome), "x-cache": "HIT"}
    if not stream:
        return web.Response(body=response_body(hit), content_type="application/json",
                            headers=headers)
    response = EventStreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    body = frame(replay_chunks(hit, include_usage=include_usage))
    await response.write_eof(body + DONE)  # a cached answer has nothing to wait for
    return response


def elapsed_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000
