"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages dialect.

To an `anthropic`-protocol provider the body passes through (only `model` rewritten) and
the answer comes back as the provider wrote it; to any other provider it is translated
into the internal chat model (`dialects.messages`), and the answer back, event by event.
The pipeline is the chat one; errors are in Anthropic's shape (app.error_response).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from .. import tokens
from ..catalog import Model
from ..dialects.chat import convert_at
from ..dialects.messages import (
    MessagesStream,
    error_event,
    parse_request,
    to_chat,
    to_message,
)
from ..errors import InvalidRequest
from ..gateway import GATEWAY, Gateway
from ..providers.anthropic import AnthropicProvider
from ..providers.base import ChatStream, Completion
from ..providers.h1 import Endpoint
from ..providers.wire import WireCompletion
from ..wire import (
    ANY,
    MAX_TOKENS,
    OPTIONAL_BOOL,
    OPTIONAL_STR,
    OPTIONAL_STR_LIST,
    RequestyMeta,
    Typed,
    decode_body,
    encode_raw,
    field,
    required,
)
from .chat import ChatRequest
from .common import read_body, requesty_headers
from .dialect import Dialect
from .pipeline import handler
from .relay import Outcome, served_by, usage_with_cost
from .translate import TranslatedStream

ROUTE: Final = "messages"
_encode = msgspec.json.encode
_MAX_HEADER_CHARS: Final = 512
_ANTHROPIC_HEADERS: Final = ("anthropic-version", "anthropic-beta")


class _Meta(msgspec.Struct):
    user_id: Any = None


_OPTIONAL_META: Final = Typed(_Meta | None)
_MESSAGES: Final = Typed(list[dict[str, Any]])

class MessagesCall:
    """A Messages request: the raw body for passthrough, its translation made on demand."""

    __slots__ = (
        "_chat",
        "_default_model",
        "body",
        "fields",
        "headers",
        "include_usage",
        "max_tokens",
        "meta",
        "model_id",
        "stream",
        "upstream_headers",
        "fallbacks",
        "_estimate",
    )

    def __init__(self, request: web.Request, body: bytes, default_model: str) -> None:
        fields = decode_body(body)
        self.model_id: str = field(fields, "model", OPTIONAL_STR) or default_model
        self.fallbacks: list[str] | None = None
        max_tokens: int = required(fields, "max_tokens", int)
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise InvalidRequest(f"`max_tokens` must be between 1 and {MAX_TOKENS}.",
                                 param="max_tokens")
        self.max_tokens: int | None = max_tokens  # required by Anthropic, never None here
        messages = required(fields, "messages", _MESSAGES)
        if not messages:
            raise InvalidRequest("`messages` must contain at least one message.",
                                 param="messages")
        self.stream: bool = field(fields, "stream", OPTIONAL_BOOL) or False
        self.include_usage = False
        meta = field(fields, "metadata", _OPTIONAL_META)
        user_id = meta.user_id if meta is not None else None
        self.meta: RequestyMeta = (
            convert_at({"user_id": user_id}, RequestyMeta, "metadata")
            if isinstance(user_id, str) else RequestyMeta()
        )
        self.headers = requesty_headers(request)
        self.upstream_headers = anthropic_headers(request)
        self.fields = fields
        self.body = body
        self._estimate = estimate(field(fields, "system", ANY), messages,
                                  field(fields, "tools", ANY))
        self._chat: ChatRequest | None = None
        self._default_model = default_model

    def prompt_tokens(self) -> int:
        return self._estimate

    def chat(self) -> ChatRequest:
        """The request in the internal chat model (for a provider that is not Anthropic);
        a 400 naming what Chat Completions cannot carry."""
        if self._chat is None:
            chat = to_chat(parse_request(self.body))
            self._chat = ChatRequest(decode_body(_encode(chat)), self._default_model,
                                     self.headers)
        return self._chat

    def stop_sequences(self) -> list[str] | None:
        value = field(self.fields, "stop_sequences", OPTIONAL_STR_LIST)
        return value if isinstance(value, list) else None

    def upstream_body(self, model: Model) -> bytes:
        fields = dict(self.fields)
        fields["model"] = encode_raw(model.upstream)
        return _encode(fields)


def anthropic_headers(request: web.Request) -> tuple[str | None, str | None]:
    """The client's `anthropic-version` and `anthropic-beta`, bounded (a 400 otherwise)."""
    out: list[str | None] = []
    for name in _ANTHROPIC_HEADERS:
        value = request.headers.get(name)
        if value is not None and (len(value) > _MAX_HEADER_CHARS or not value.isascii()
                                  or not value.isprintable()):
            raise InvalidRequest(f"The `{name}` header must be at most {_MAX_HEADER_CHARS} "
                                 "printable ASCII characters.", param=name)
        out.append(value)
    return out[0], out[1]


def estimate(system: Any, messages: list[dict[str, Any]], tools: Any) -> int:
    """About four characters a token over the text of the prompt; an image or a document
    counts as a fixed chunk (its base64 says nothing about its tokens)."""
    chars = _chars(system) + (len(_encode(tools)) if tools else 0)
    for m in messages:
        chars += _chars(m.get("content"))
    return max(1, tokens.text_tokens(chars)) + tokens.PER_MESSAGE_TOKENS * len(messages)


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    n = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "document"):
            n += tokens.IMAGE_CHARS
        elif kind == "tool_use":
            n += len(_encode(block.get("input")))
        elif kind == "tool_result":
            n += _chars(block.get("content"))
        else:
            text = block.get("text") or block.get("thinking")
            n += len(text) if isinstance(text, str) else 0
    return n


class MessagesDialect(Dialect[MessagesCall]):
    route = ROUTE

    def decode(self, request: web.Request, body: bytes, gw: Gateway) -> MessagesCall:
        return MessagesCall(request, body, gw.settings.default_model)

    @staticmethod
    def _endpoint(provider: AnthropicProvider, req: MessagesCall, path: str = "") -> Endpoint:
        version, beta = req.upstream_headers
        return provider.endpoint(path, version, beta)

    async def complete(self, gw: Gateway, req: MessagesCall, model: Model) -> Completion:
        provider = gw.provider(model.provider)
        if isinstance(provider, AnthropicProvider):
            return await provider.messages(req.upstream_body(model),
                                           self._endpoint(provider, req))
        return await provider.chat(req.chat().call(model))

    async def open(self, gw: Gateway, req: MessagesCall, model: Model) -> ChatStream:
        provider = gw.provider(model.provider)
        if isinstance(provider, AnthropicProvider):
            return await provider.messages_stream(req.upstream_body(model),
                                                  self._endpoint(provider, req), model.upstream)
        inner = await provider.stream(req.chat().call(model))
        tr = MessagesStream(req.model_id, req.stop_sequences(), req.prompt_tokens(),
                            provider.name)
        return TranslatedStream(inner, tr, lambda e: error_event(e.status, e.message))

    def respond(self, request: web.Request, req: MessagesCall, completion: Completion,
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
            body = _encode(to_message(_encode(payload), req.model_id, req.stop_sequences(),
                                      outcome.model.provider))
        return web.Response(body=body, content_type="application/json",
                            headers=served_by(request, outcome))


MESSAGES: Final = MessagesDialect()
messages = handler(MESSAGES)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The provider's count where it has the endpoint (Anthropic), an estimate otherwise.
    Free: no admission, no usage record, no charge."""
    gw = request.app[GATEWAY]
    body = await read_body(request, gw.settings.max_body_bytes)
    fields = decode_body(body)
    model_id: str = field(fields, "model", str | None) or gw.settings.default_model
    messages_ = required(fields, "messages", _MESSAGES)
    route = gw.router.resolve(model_id)
    model = route.models[0]
    provider = gw.provider(model.provider)
    headers = {"x-model": model.id, "x-provider": model.provider}
    if isinstance(provider, AnthropicProvider):
        version, beta = anthropic_headers(request)
        fields = dict(fields)
        fields["model"] = encode_raw(model.upstream)
        answer = await provider.count_tokens(_encode(fields),
                                             provider.endpoint("/count_tokens", version, beta))
        return web.Response(body=answer, content_type="application/json", headers=headers)
    count = estimate(field(fields, "system", Any), messages_, field(fields, "tools", Any))
    headers["x-estimated"] = "true"
    return web.json_response({"input_tokens": count}, headers=headers)


__all__ = ["MESSAGES", "MessagesCall", "count_tokens", "messages"]
