"""POST /v1/completions: legacy text completions, passed through to OpenAI-compatible
providers (`/completions`, fill-in-the-middle `suffix` included); a 400 naming the model
for a provider that does not serve it. Its stream has chat's shape (`data:` chunks, the
usage chunk, `[DONE]`), so the relay pipes it as it pipes chat.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web
from msgspec import Raw

from .. import tokens
from ..cache import CachedCompletion
from ..catalog import Model
from ..errors import InvalidRequest
from ..gateway import Gateway
from ..providers.base import ChatCall, ChatStream, Completion
from ..providers.openai import OpenAIProvider
from ..providers.sse import frame
from ..wire import (
    MAX_TOKENS,
    OPTIONAL_BOOL,
    OPTIONAL_INT,
    OPTIONAL_META,
    OPTIONAL_STR,
    OPTIONAL_STREAM_OPTIONS,
    STR,
    STR_LIST,
    RequestyMeta,
    decode_body,
    field,
    required,
)
from .common import requesty_headers
from .dialect import Dialect
from .pipeline import handler
from .relay import DONE, Outcome, completion_response

ROUTE: Final = "completions"
_GATEWAY_FIELDS: Final = ("requesty", "models")
# OpenAI's default `max_tokens` for completions.
DEFAULT_MAX_TOKENS: Final = 16


class CompletionsCall:
    __slots__ = ("_estimate", "fallbacks", "fields", "headers", "include_usage", "max_tokens",
                 "meta", "model_id", "stream")

    def __init__(self, request: web.Request, body: bytes, default_model: str) -> None:
        fields = decode_body(body)
        self.model_id: str = field(fields, "model", STR) or default_model
        self.fallbacks: list[str] | None = field(fields, "models", STR_LIST)
        prompt = required(fields, "prompt", str | list[Any])
        self.stream: bool = field(fields, "stream", OPTIONAL_BOOL) or False
        opts = field(fields, "stream_options", OPTIONAL_STREAM_OPTIONS)
        self.include_usage = bool(opts and opts.include_usage)
        self.max_tokens: int | None = field(fields, "max_tokens", OPTIONAL_INT)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_TOKENS:
            raise InvalidRequest(f"`max_tokens` must be between 1 and {MAX_TOKENS}.",
                                 param="max_tokens")
        if self.max_tokens is None:
            self.max_tokens = DEFAULT_MAX_TOKENS
        self.meta: RequestyMeta = field(fields, "requesty", OPTIONAL_META) or RequestyMeta()
        self.headers = requesty_headers(request)
        if any(name in fields for name in _GATEWAY_FIELDS):
            fields = {k: v for k, v in fields.items() if k not in _GATEWAY_FIELDS}
        self.fields: dict[str, Raw] = fields
        suffix = field(fields, "suffix", OPTIONAL_STR) or ""
        self._estimate = estimate(prompt, suffix)

    def prompt_tokens(self) -> int:
        return self._estimate

    def call(self, model: Model) -> ChatCall:
        return ChatCall(model, self.fields, [], self.stream, self.max_tokens)


def estimate(prompt: str | list[Any], suffix: str) -> int:
    """Characters of text prompts; a token-id prompt counts its ids."""
    if isinstance(prompt, str):
        return max(1, tokens.text_tokens(len(prompt) + len(suffix)))
    n = 0
    for item in prompt:
        if isinstance(item, str):
            n += tokens.text_tokens(len(item))
        elif isinstance(item, list):
            n += len(item)
        else:
            n += 1
    return max(1, n + tokens.text_tokens(len(suffix)))


def _provider(gw: Gateway, model: Model) -> OpenAIProvider:
    provider = gw.provider(model.provider)
    if not isinstance(provider, OpenAIProvider):
        raise InvalidRequest(
            f"The model `{model.id}` does not serve `/v1/completions`: its provider speaks "
            f"`{provider.config.protocol}`; use `/v1/chat/completions`.", param="model")
    return provider


class CompletionsDialect(Dialect[CompletionsCall]):
    route = ROUTE

    def decode(self, request: web.Request, body: bytes, gw: Gateway) -> CompletionsCall:
        return CompletionsCall(request, body, gw.settings.default_model)

    async def complete(self, gw: Gateway, req: CompletionsCall, model: Model) -> Completion:
        return await _provider(gw, model).completions(req.call(model))

    async def open(self, gw: Gateway, req: CompletionsCall, model: Model) -> ChatStream:
        return await _provider(gw, model).completions_stream(req.call(model))

    def respond(self, request: web.Request, req: CompletionsCall, completion: Completion,
                outcome: Outcome) -> web.Response:
        return completion_response(request, completion, outcome)

    def stream_entry(self, kept: list[bytes], stream: ChatStream,
                     model: Model) -> CachedCompletion | None:
        """Chunks as sent, then `[DONE]` (the usage chunk, held back, is not replayed)."""
        entry = super().stream_entry(kept, stream, model)
        if entry is None:
            return None
        return msgspec.structs.replace(entry, body=frame(kept) + DONE)


COMPLETIONS: Final = CompletionsDialect()
completions = handler(COMPLETIONS)
