"""What differs between the client dialects the gateway speaks, as one small object each.

The pipeline (`pipeline.py`: decode, authorize, idempotency, admit, journal, route, relay,
record) is the same for every dialect; a `Dialect` supplies the parts that are not:
how the client's body becomes a request the pipeline can route and limit, how one
upstream attempt is made for a model (passed through when the provider speaks the
client's own format, translated otherwise), how a complete answer is rendered, how a
cache entry or a kept idempotent answer is replayed, and the route label that metrics,
the access log and the ledger record carry. Chat Completions is the identity dialect
(`chat.CHAT`); the others are in `messages.py`, `responses.py` and `completions.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import msgspec
from aiohttp import web
from msgspec import Raw

from ..cache import CachedCompletion
from ..catalog import Model, Usage
from ..idempotency import Answer, Once
from ..idempotency.replay import REPLAYED
from ..providers.base import ChatStream, Completion
from ..wire import RequestyMeta
from .common import echo_request_id
from ..compat.aiohttp_stream import EventStreamResponse
from .relay import SSE_HEADERS, Outcome, served_by

if TYPE_CHECKING:  # the gateway imports the handlers' modules
    from ..gateway import Gateway


class DialectRequest(Protocol):
    """The parts of a decoded request that routing, limits, the cache and the ledger read."""

    model_id: str
    fallbacks: list[str] | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    meta: RequestyMeta
    headers: dict[str, str]
    fields: dict[str, Raw]  # what the response cache keys on (the gateway's fields removed)

    def prompt_tokens(self) -> int:
        """The gateway's estimate of the prompt (reservations, and usage no one reported)."""
        ...


R = TypeVar("R", bound=DialectRequest)


class Dialect(abc.ABC, Generic[R]):
    """One client wire format. Subclasses are stateless: one instance serves every request."""

    route: str  # the metrics and ledger label: "chat", "messages", "responses", "completions"

    @abc.abstractmethod
    def decode(self, request: web.Request, body: bytes, gw: Gateway) -> R:
        """The client's body as a request; a 4xx `ApiError` naming what is wrong."""

    @abc.abstractmethod
    def complete(self, gw: Gateway, req: R, model: Model) -> Awaitable[Completion]:
        """One non-streamed upstream attempt for `model` (a coroutine function, or a plain
        one that returns the provider's coroutine: one frame less on the chat path)."""

    @abc.abstractmethod
    def open(self, gw: Gateway, req: R, model: Model) -> Awaitable[ChatStream]:
        """Open one streamed upstream attempt for `model`: its events in the client's format."""

    @abc.abstractmethod
    def respond(self, request: web.Request, req: R, completion: Completion,
                outcome: Outcome) -> web.Response:
        """The client's answer from a complete upstream one (sets `outcome`'s usage)."""

    def cache_scope(self, req: R) -> str:
        """What, besides the owner and the fields, names a cache entry: a streamed and a
        plain answer are different bytes in every dialect but chat."""
        return f"{self.route}:{'stream' if req.stream else 'json'}:{req.model_id}"

    def cache_entry(self, response: web.Response, completion: Completion,
                    model: Model) -> CachedCompletion:
        """A complete answer as a cache entry: the client's body, byte for byte."""
        body = response.body if isinstance(response.body, bytes) else b""
        usage = completion.usage
        return CachedCompletion(
            body=body,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            finish_reason=completion.finish_reason, model=model.id, provider=model.provider,
        )

    def stream_entry(self, kept: list[bytes], stream: ChatStream,
                     model: Model) -> CachedCompletion | None:
        """A finished stream (its payloads as sent) as a cache entry of its SSE bytes."""
        if not stream.finished:
            return None
        usage = stream.usage
        return CachedCompletion(
            body=reframe(kept),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            finish_reason=stream.finish_reason, model=model.id, provider=model.provider,
        )

    async def keep_stream(self, kept: list[bytes], stream: ChatStream, outcome: Outcome,
                          cache_key: str | None, once: Once | None, gw: Gateway,
                          settle: Callable[[], Usage]) -> None:
        """Keep a stream that reached its end for the cache and an idempotent repeat: its
        SSE bytes as the client got them (a cut one is never kept)."""
        entry = self.stream_entry(kept, stream, outcome.model)
        if entry is None:
            return
        if once is not None:
            await once.keep_cached(entry, outcome.model)
        if cache_key is not None:
            await gw.cache.store(cache_key, entry)

    async def replay(self, request: web.Request, req: R, hit: CachedCompletion,
                     outcome: Outcome) -> web.StreamResponse:
        """Serve a cache hit in this dialect (its stored bytes)."""
        headers = {**served_by(request, outcome), "x-cache": "HIT"}
        return await _send(request, hit.body, req.stream, headers)

    async def replay_kept(self, request: web.Request, req: R,
                          answer: Answer) -> web.StreamResponse:
        """Serve an idempotent repeat its first answer (kept as the client's bytes)."""
        headers = {"x-request-id": echo_request_id(request), "x-model": answer.model,
                   "x-provider": answer.provider, REPLAYED: "true"}
        body = answer.stream.body if answer.stream is not None else answer.body
        return await _send(request, body, req.stream, headers)


async def _send(request: web.Request, body: bytes, stream: bool,
                headers: dict[str, str]) -> web.StreamResponse:
    if not stream:
        return web.Response(body=body, content_type="application/json", headers=headers)
    response = EventStreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    await response.write_eof(body)
    return response


class _Typed(msgspec.Struct):
    type: str = ""


_decode_typed: Final = msgspec.json.Decoder(_Typed).decode


def reframe(kept: list[bytes]) -> bytes:
    """SSE payloads (as `providers.sse.payloads` keeps them) framed again with their event
    names, which Anthropic's and OpenAI's event streams repeat as the payload's `type`."""
    out: list[bytes] = []
    for data in kept:
        try:
            name = _decode_typed(data).type
        except msgspec.MsgspecError:
            name = ""
        if name:
            out.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
        else:
            out.append(b"data: " + data + b"\n\n")
    return b"".join(out)

