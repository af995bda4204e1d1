"""POST /v1/chat/completions: the identity dialect of the pipeline (`pipeline.py`).

The client's body is the internal model: it passes to OpenAI-compatible providers byte for
byte except the fields the gateway owns, and the answer goes back as the provider sent it
(usage with `cost` added). Nothing here runs per chunk: the relay pipes the chunks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from msgspec import Raw

from .. import tokens
from ..cache import (
    CachedCompletion,
    IncompleteStream,
    completion_from_body,
    completion_from_stream_chunks,
)
from ..catalog import Model, Usage
from ..errors import InvalidRequest
from ..gateway import Gateway
from ..idempotency import Answer, Once, replay_answer
from ..providers.base import ChatCall, ChatStream, Completion
from ..wire import (
    CHAT_MESSAGES,
    MAX_TOKENS,
    OPTIONAL_BOOL,
    OPTIONAL_INT,
    OPTIONAL_META,
    OPTIONAL_STREAM_OPTIONS,
    STR,
    STR_LIST,
    Message,
    RequestyMeta,
    decode_body,
    field,
    required,
)
from .common import requesty_headers
from .dialect import Dialect
from .pipeline import handler
from .relay import Outcome, completion_response, replay

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
        self.model_id: str = field(fields, "model", STR) or default_model
        self.fallbacks: list[str] | None = field(fields, "models", STR_LIST)
        self.messages: list[Message] = required(fields, "messages", CHAT_MESSAGES)
        if not self.messages:
            raise InvalidRequest("`messages` must contain at least one message.", param="messages")
        self.stream: bool = field(fields, "stream", OPTIONAL_BOOL) or False
        opts = field(fields, "stream_options", OPTIONAL_STREAM_OPTIONS)
        self.include_usage = bool(opts and opts.include_usage)
        cap = "max_completion_tokens"
        self.max_tokens: int | None = field(fields, cap, OPTIONAL_INT)
        if self.max_tokens is None:
            cap = "max_tokens"
            self.max_tokens = field(fields, cap, OPTIONAL_INT)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_TOKENS:
            raise InvalidRequest(f"`{cap}` must be between 1 and {MAX_TOKENS}.", param=cap)
        self.meta: RequestyMeta = field(fields, "requesty", OPTIONAL_META) or RequestyMeta()
        self.headers = headers or {}  # X-Requesty-*, validated by the caller
        if any(name in fields for name in _GATEWAY_FIELDS):
            fields = {k: v for k, v in fields.items() if k not in _GATEWAY_FIELDS}
        self.fields = fields

    def prompt_tokens(self) -> int:
        return tokens.prompt_tokens(self.messages)

    def call(self, model: Model) -> ChatCall:
        return ChatCall(model, self.fields, self.messages, self.stream, self.max_tokens,
                        self.meta.auto_cache)


class ChatDialect(Dialect[ChatRequest]):
    """Chat Completions: decode is the chat decode, the answer is the provider's."""

    route = ROUTE

    def decode(self, request: web.Request, body: bytes, gw: Gateway) -> ChatRequest:
        return ChatRequest(decode_body(body), gw.settings.default_model, requesty_headers(request))

    def complete(self, gw: Gateway, req: ChatRequest, model: Model) -> Awaitable[Completion]:
        return gw.provider(model.provider).chat(req.call(model))

    def open(self, gw: Gateway, req: ChatRequest, model: Model) -> Awaitable[ChatStream]:
        return gw.provider(model.provider).stream(req.call(model))

    def respond(self, request: web.Request, req: ChatRequest, completion: Completion,
                outcome: Outcome) -> web.Response:
        return completion_response(request, completion, outcome)

    def cache_scope(self, req: ChatRequest) -> str:
        return req.model_id  # a streamed and a plain request share an entry

    def cache_entry(self, response: web.Response, completion: Completion,
                    model: Model) -> CachedCompletion:
        return completion_from_body(completion.payload, completion.usage, model=model.id,
                                    provider=model.provider)

    async def keep_stream(self, kept: list[bytes], stream: ChatStream, outcome: Outcome,
                          cache_key: str | None, once: Once | None, gw: Gateway,
                          settle: Callable[[], Usage]) -> None:
        if once is not None:
            cost = outcome.model.cost(settle())  # as the record charges
            await once.keep_stream(kept, stream, outcome.model, cost)
        if cache_key is not None:
            try:
                cached = completion_from_stream_chunks(
                    kept, outcome.usage, model=outcome.model.id, provider=outcome.model.provider)
            except IncompleteStream:
                return  # a partial answer is never cached
            await gw.cache.store(cache_key, cached)

    async def replay(self, request: web.Request, req: ChatRequest, hit: CachedCompletion,
                     outcome: Outcome) -> web.StreamResponse:
        return await replay(request, hit, outcome, req.stream, req.include_usage)

    async def replay_kept(self, request: web.Request, req: ChatRequest,
                          answer: Answer) -> web.StreamResponse:
        return await replay_answer(request, answer, req.include_usage)


CHAT: Final = ChatDialect()
chat_completions = handler(CHAT)
