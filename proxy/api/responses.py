"""POST /v1/responses: OpenAI's Responses dialect.

To a provider marked `responses_api = true` (OpenAI) the body passes through (`model`
rewritten; `store` false unless the client says otherwise: the gateway's default) and
the answer comes back as the provider wrote it. To any other provider, Anthropic's
included, it is translated into the internal chat model (`dialects.responses`), and the
answer back, event by event. Errors keep OpenAI's shape, which Responses shares.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from .. import tokens
from ..catalog import Model
from ..dialects.chat import convert_at
from ..dialects.responses import (
    ResponsesRequest,
    ResponsesStream,
    parse_request,
    to_chat,
    to_response,
)
from ..errors import InvalidRequest
from ..gateway import Gateway
from ..metadata import Extra, Identifier
from ..providers.base import ChatStream, Completion
from ..providers.openai import OpenAIProvider
from ..providers.wire import WireCompletion
from ..wire import (
    ANY,
    MAX_TOKENS,
    OPTIONAL_BOOL,
    OPTIONAL_INT,
    OPTIONAL_STR,
    RequestyMeta,
    Typed,
    decode_body,
    encode_raw,
    field,
)
from .chat import ChatRequest
from .common import requesty_headers
from .dialect import Dialect
from .pipeline import handler
from .relay import Outcome, served_by, usage_with_cost
from .translate import TranslatedStream

ROUTE: Final = "responses"
_encode = msgspec.json.encode
_STORE_FALSE: Final = msgspec.Raw(b"false")
_OPTIONAL_USER: Final = Typed(Identifier | None)
_OPTIONAL_EXTRA: Final = Typed(Extra | None)


class ResponsesCall:
    """A Responses request: the raw body for passthrough, its translation on demand."""

    __slots__ = (
        "_chat",
        "_default_model",
        "_estimate",
        "_parsed",
        "body",
        "fallbacks",
        "fields",
        "headers",
        "include_usage",
        "max_tokens",
        "meta",
        "model_id",
        "stream",
    )

    def __init__(self, request: web.Request, body: bytes, default_model: str) -> None:
        fields = decode_body(body)
        self.model_id: str = field(fields, "model", OPTIONAL_STR) or default_model
        self.fallbacks: list[str] | None = None
        self.stream: bool = field(fields, "stream", OPTIONAL_BOOL) or False
        self.include_usage = False
        self.max_tokens: int | None = field(fields, "max_output_tokens", OPTIONAL_INT)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_TOKENS:
            raise InvalidRequest(f"`max_output_tokens` must be between 1 and {MAX_TOKENS}.",
                                 param="max_output_tokens")
        if "input" not in fields:
            raise InvalidRequest("`input` is required.", param="input")
        user: str | None = field(fields, "user", _OPTIONAL_USER)
        extra: dict[str, str] = field(fields, "metadata", _OPTIONAL_EXTRA) or {}
        self.meta = RequestyMeta(user_id=user, extra=extra) if user or extra else RequestyMeta()
        self.headers = requesty_headers(request)
        self.fields = fields
        self.body = body
        self._estimate = estimate(field(fields, "instructions", OPTIONAL_STR),
                                  field(fields, "input", ANY), field(fields, "tools", ANY))
        self._parsed: ResponsesRequest | None = None
        self._chat: ChatRequest | None = None
        self._default_model = default_model

    def prompt_tokens(self) -> int:
        return self._estimate

    def parsed(self) -> ResponsesRequest:
        if self._parsed is None:
            self._parsed = parse_request(self.body)
        return self._parsed

    def chat(self) -> ChatRequest:
        """The request in the internal chat model; a 400 naming what chat cannot carry."""
        if self._chat is None:
            chat = to_chat(self.parsed())
            chat.setdefault("model", self.model_id)
            self._chat = ChatRequest(decode_body(_encode(chat)), self._default_model,
                                     self.headers)
        return self._chat

    def upstream_body(self, model: Model) -> bytes:
        fields = dict(self.fields)
        fields["model"] = encode_raw(model.upstream)
        fields.setdefault("store", _STORE_FALSE)  # nothing kept upstream unless asked for
        return _encode(fields)


def estimate(instructions: str | None, input_: Any, tools: Any) -> int:
    chars = len(instructions or "") + (len(_encode(tools)) if tools else 0)
    items = 1
    if isinstance(input_, str):
        chars += len(input_)
    elif isinstance(input_, list):
        items = len(input_)
        for item in input_:
            chars += _item_chars(item)
    return max(1, tokens.text_tokens(chars)) + tokens.PER_MESSAGE_TOKENS * items


def _item_chars(item: Any) -> int:
    if not isinstance(item, dict):
        return 0
    n = 0
    for name in ("content", "output"):
        value = item.get(name)
        if isinstance(value, str):
            n += len(value)
        elif isinstance(value, list):
            for part in value:
                if not isinstance(part, dict):
                    continue
                text = part.get("text")
                n += len(text) if isinstance(text, str) else tokens.IMAGE_CHARS
    arguments = item.get("arguments")
    return n + (len(arguments) if isinstance(arguments, str) else 0)


class ResponsesDialect(Dialect[ResponsesCall]):
    route = ROUTE

    def decode(self, request: web.Request, body: bytes, gw: Gateway) -> ResponsesCall:
        return ResponsesCall(request, body, gw.settings.default_model)

    async def complete(self, gw: Gateway, req: ResponsesCall, model: Model) -> Completion:
        provider = gw.provider(model.provider)
        if isinstance(provider, OpenAIProvider) and provider.config.responses_api:
            return await provider.responses(req.upstream_body(model), model)
        return await provider.chat(req.chat().call(model))

    async def open(self, gw: Gateway, req: ResponsesCall, model: Model) -> ChatStream:
        provider = gw.provider(model.provider)
        if isinstance(provider, OpenAIProvider) and provider.config.responses_api:
            return await provider.responses_stream(req.upstream_body(model), model)
        parsed = req.parsed()
        inner = await provider.stream(req.chat().call(model))
        tr = ResponsesStream(parsed, req.model_id, provider.name)
        return TranslatedStream(inner, tr, tr.error)

    def respond(self, request: web.Request, req: ResponsesCall, completion: Completion,
                outcome: Outcome) -> web.Response:
        outcome.usage = completion.usage
        outcome.finish_reason = completion.finish_reason
        outcome.text_chars = completion.text_chars
        if isinstance(completion, WireCompletion):
            body = _encode(completion.payload)
        else:
            payload = dict(completion.payload)
            if completion.usage is not None:  # as charged, should the provider's be untrue
                payload["usage"] = usage_with_cost(payload.get("usage"), completion.usage, 0)
            answer = to_response(_encode(payload), req.parsed(), outcome.model.provider)
            answer["model"] = req.model_id
            body = _encode(answer)
        return web.Response(body=body, content_type="application/json",
                            headers=served_by(request, outcome))


RESPONSES: Final = ResponsesDialect()
responses = handler(RESPONSES)

__all__ = ["RESPONSES", "ResponsesCall", "convert_at", "responses"]
