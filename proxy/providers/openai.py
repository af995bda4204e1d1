"""Any OpenAI-compatible server (OpenAI, DeepSeek, Together, vLLM, ...).

Requests pass through byte-for-byte except `model` (the upstream name) and, for
streams, `stream_options.include_usage` (always on, so every stream is metered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from msgspec import Raw

from ..catalog import Model, Usage
from ..config import ProviderConfig
from ..errors import UpstreamError
from ..wire import encode_raw
from .base import ChatCall, ChatStream, Completion, Embedding, Provider
from .h1 import Endpoint, H1Error, Response
from .http import post, read_all, transport_error, upstream_error
from .sse import SSEParser

_encode = msgspec.json.encode
_decode_fields = msgspec.json.Decoder(dict[str, Raw]).decode
_INCLUDE_USAGE: Final = Raw(b'{"include_usage":true}')


class _Details(msgspec.Struct):
    cached_tokens: int = 0
    cache_creation_tokens: int = 0  # some compatible servers report writes this way


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _Details | None = None


class _ToolCall(msgspec.Struct):
    function: dict[str, Any] | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _Lite(msgspec.Struct):
    """What the gateway reads of a chunk or completion; everything else is skipped."""

    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_lite = msgspec.json.Decoder(_Lite).decode
_decode_usage = msgspec.json.Decoder(_Usage).decode


def to_usage(u: _Usage | None) -> Usage | None:
    if u is None:
        return None
    d = u.prompt_tokens_details
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_tokens=d.cached_tokens if d else 0,
        cache_write_tokens=d.cache_creation_tokens if d else 0,
    )


def _text_chars(choice: _Choice) -> int:
    part = choice.delta or choice.message
    if part is None:
        return 0
    n = len(part.content) if part.content else 0
    for tc in part.tool_calls or ():
        args = (tc.function or {}).get("arguments")
        if isinstance(args, str):
            n += len(args)
    return n


def build_body(call: ChatCall) -> bytes:
    fields = dict(call.fields)
    fields["model"] = encode_raw(call.model.upstream)
    if call.stream:
        opts = fields.get("stream_options")
        if opts is None:
            fields["stream_options"] = _INCLUDE_USAGE
        else:
            merged = msgspec.json.decode(opts) if opts else {}
            merged = merged if isinstance(merged, dict) else {}
            merged["include_usage"] = True
            fields["stream_options"] = encode_raw(merged)
    return _encode(fields)


class OpenAIStream(ChatStream):
    def __init__(self, provider: str, resp: Response) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        parser = SSEParser()
        resp = self._resp
        done = False
        try:
            async for chunk in resp:
                batch: list[bytes] = []
                for _event, data in parser.feed(chunk):
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        forward = self._read(data)
                    except UpstreamError:
                        if batch:
                            yield batch  # what came before the error still reaches the client
                        raise
                    if forward:
                        batch.append(data)
                if batch:
                    yield batch
                if done:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        finally:
            resp.release() if done else resp.close()
        if not done and self.finish_reason is None:
            raise UpstreamError(
                f"The stream from upstream provider `{self._provider}` ended early.",
                reason="cut",
            )

    def _read(self, data: bytes) -> bool:
        """Account one event; False for the usage chunk, which the caller sends itself."""
        if data.startswith(b'{"error"'):
            raise upstream_error(self._provider, 502, data, None)
        try:
            lite = _decode_lite(data)
        except msgspec.MsgspecError:
            raise UpstreamError(
                f"Upstream provider `{self._provider}` sent a malformed event.",
                reason="malformed",
            ) from None
        for choice in lite.choices:
            self.text_chars += _text_chars(choice)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if lite.usage is not None:
            self.usage = to_usage(lite.usage)
            if not lite.choices:
                self.usage_chunk = _decode_fields(data)
                return False
        return True

    async def aclose(self) -> None:
        self._resp.close()


class OpenAIProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig, api_key: str | None) -> None:
        super().__init__(name, config, api_key)
        base = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}  # encoded once, not per request
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._chat = Endpoint(base + "/chat/completions", headers)
        self._embeddings = Endpoint(base + "/embeddings", headers)

    async def _post(self, endpoint: Endpoint, body: bytes) -> Response:
        return await post(self.pool, self.name, endpoint, body)

    async def chat(self, call: ChatCall) -> Completion:
        body = await read_all(self.name, await self._post(self._chat, build_body(call)))
        try:
            payload = _decode_fields(body)
            lite = _decode_lite(body)
        except msgspec.MsgspecError:
            raise UpstreamError(
                f"Upstream provider `{self.name}` sent a malformed response.", reason="malformed"
            ) from None
        finish = next((c.finish_reason for c in lite.choices if c.finish_reason), None)
        chars = sum(_text_chars(c) for c in lite.choices)
        return Completion(payload, to_usage(lite.usage), finish, chars)

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(self._chat, build_body(call))
        return OpenAIStream(self.name, resp)

    async def embed(self, model: Model, fields: dict[str, Raw]) -> Embedding:
        fields = dict(fields)
        fields["model"] = encode_raw(model.upstream)
        resp = await self._post(self._embeddings, _encode(fields))
        body = await read_all(self.name, resp)
        try:
            payload = _decode_fields(body)
            usage = _decode_usage(payload["usage"]) if "usage" in payload else None
        except (msgspec.MsgspecError, KeyError):
            raise UpstreamError(
                f"Upstream provider `{self.name}` sent a malformed response.", reason="malformed"
            ) from None
        return Embedding(payload, to_usage(usage))
