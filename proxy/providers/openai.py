"""Any OpenAI-compatible server (OpenAI, DeepSeek, Together, vLLM, ...).

Requests pass through byte-for-byte except `model` (the upstream name) and, for
streams, `stream_options.include_usage` (always on, so every stream is metered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

import msgspec
from msgspec import Raw

from ..catalog import Model, Usage
from ..config import ProviderConfig
from ..errors import InvalidRequest, UpstreamError, malformed_event, malformed_response, stream_cut
from ..wire import encode_raw
from .base import ChatCall, ChatStream, Completion, Embedding, Provider
from .faults import error_event
from .h1 import Endpoint, H1Error, Response
from .openai_native import ResponsesWireStream
from .openai_native import to_wire_completion as responses_wire
from .http import post, read_all, transport_error
from .redact import PATTERNS_ONLY, Redactor
from .sse import LF, SSEParser, frame, parse

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
    error: Raw | None = None  # an error event in a stream


_decode_lite = msgspec.json.Decoder(_Lite).decode
_decode_run = msgspec.json.Decoder(list[_Lite]).decode
_DONE_EVENT: Final = b"data: [DONE]\n\n"
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
    if part.tool_calls:
        n += _argument_chars(part.tool_calls)
    return n


def _argument_chars(tool_calls: list[_ToolCall]) -> int:
    n = 0
    for tc in tool_calls:
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
        elif opts != _INCLUDE_USAGE:  # already what we would send (compact JSON): as it is
            merged = msgspec.json.decode(opts) if opts else {}
            merged = merged if isinstance(merged, dict) else {}
            merged["include_usage"] = True
            fields["stream_options"] = encode_raw(merged)
    return _encode(fields)


class OpenAIStream(ChatStream):
    def __init__(self, provider: str, resp: Response, redact: Redactor = PATTERNS_ONLY) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._redact = redact
        self._parser = SSEParser()
        self._sink: Callable[[bytes], bool] = _not_pushing
        self._push_error: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        resp = self._resp
        try:
            async for chunk in resp:
                out = self._take(chunk)
                if out:
                    yield out
                if self.finished:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        except _BrokeAfter as broke:
            if broke.sent:
                yield broke.sent  # what came before the error still reaches the client
            raise broke.error from None
        finally:
            resp.release() if self.finished else resp.close()
        if not self.finished and self.finish_reason is None:
            raise stream_cut(self._provider)

    async def push(self, sink: Callable[[bytes], bool]) -> None:
        """Each read parsed, accounted and handed to `sink` in the connection's callback.

        An error event or a malformed one is raised here as iterating would raise it;
        a transport failure is left for the next iteration to raise.
        """
        if self.finished:
            return
        self._sink = sink
        try:
            await self._resp.push(self._pushed)
        finally:
            self._sink = _not_pushing
        error, self._push_error = self._push_error, None
        if error is None:
            return
        self._resp.close()
        if isinstance(error, _BrokeAfter):
            if error.sent:
                sink(error.sent)  # what came before the error still reaches the client
            raise error.error from None
        raise error

    def _pushed(self, chunk: bytes) -> bool:
        """The connection's receiver: True while the stream goes on and the client keeps up."""
        try:
            out = self._take(chunk)
        except Exception as e:  # noqa: BLE001 - raised again from push(), not in the parser
            self._push_error = e
            return False
        if out and not self._sink(out):
            return False
        return not self.finished

    def _take(self, chunk: bytes) -> bytes:
        """One read in: the events it completes, accounted, as SSE bytes for the client."""
        complete = self._parser.take(chunk)
        if not complete:
            return b""
        out = self._read_run(complete)
        return self._read_events(complete) if out is None else out

    def _read_run(self, complete: bytes) -> bytes | None:
        """Account a run of one-line `data:` events with one decode, and forward its bytes
        as they came; None when the run is anything else (the general path handles it).

        A read usually brings one event of a paced stream, or many of a fast one: the
        events become one JSON array (`data: ` between blocks becomes a comma, which only
        a block boundary can hold: JSON strings have no raw newlines). Split and joined,
        not replaced: CPython's `replace` searches the read twice, `split` once.
        """
        done = complete.endswith(_DONE_EVENT)
        if done:
            complete = complete[: -len(_DONE_EVENT)]
            if not complete:
                self.finished = True
                return b""
        if not complete.startswith(b"data: {"):
            return None
        blocks = complete[6:-2].split(b"\n\ndata: ")
        joined = b",".join(blocks)
        if LF in joined:
            return None  # comments, event names, multi-line data: event by event
        try:
            lites = _decode_run(b"[" + joined + b"]")
        except msgspec.MsgspecError:
            return None
        if len(lites) != len(blocks):
            return None  # a block held more than one JSON value: malformed, said precisely
        last = lites[-1]
        for lite in lites:  # checked before any is accounted: a fallback must not count twice
            if lite.error is not None:
                return None  # the general path raises it after forwarding what came before
            if not lite.choices and (lite.usage is None or lite is not last):
                return None  # a usage chunk before the end, or an empty one: event by event
        self._account(lites)
        if last.usage is not None and not last.choices:  # the usage chunk: the caller sends it
            self.usage_chunk = _decode_fields(blocks[-1])
            complete = complete[: len(complete) - len(blocks[-1]) - 8]  # less its data: ...\n\n
        self.finished = done
        return complete

    def _read_events(self, complete: bytes) -> bytes:
        """The general path: event by event, any SSE shape, precise errors."""
        sent: list[bytes] = []
        for _event, data in parse(complete):
            if data == b"[DONE]":
                self.finished = True
                break
            try:
                forward = self._read(data)
            except UpstreamError as e:
                raise _BrokeAfter(frame(sent), e) from None
            if forward:
                sent.append(data)
        return frame(sent)

    def _read(self, data: bytes) -> bool:
        """Account one event; False for the usage chunk, which the caller sends itself."""
        if data.startswith(b'{"error"'):
            # Mapped as the same error would be as an answer, its message redacted.
            raise error_event(self._provider, data, self._redact)
        try:
            lite = _decode_lite(data)
        except msgspec.MsgspecError:
            raise malformed_event(self._provider) from None
        self._account((lite,))
        if not lite.choices:
            if lite.usage is not None:
                self.usage_chunk = _decode_fields(data)
            # Else a chunk with nothing for the client (Azure's `prompt_filter_results`
            # preamble: empty `id`, `object` and `model`): not forwarded, nor cached.
            return False
        return True

    def _account(self, lites: Sequence[_Lite]) -> None:
        """Add the events' text and take their finish reason and usage. One loop, with the
        common delta (text, no tool calls) inline: it runs for every event of a stream.
        (It repeats `_text_chars` on purpose: calling it per event, or a shared tally
        returning a tuple, cost 1.3 % of a paced stream's instructions.)"""
        chars = self.text_chars
        for lite in lites:
            for choice in lite.choices:
                part = choice.delta or choice.message
                if part is not None:
                    if part.content:
                        chars += len(part.content)
                    if part.tool_calls:
                        chars += _argument_chars(part.tool_calls)
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
            if lite.usage is not None:
                self.usage = to_usage(lite.usage)
        self.text_chars = chars

    async def aclose(self) -> None:
        self._resp.close()


def _not_pushing(_: bytes) -> bool:
    return False


class _BrokeAfter(Exception):
    """An upstream error event in the middle of a read, with the events before it."""

    def __init__(self, sent: bytes, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.sent = sent
        self.error = error


class Routes(Protocol):
    """Where an OpenAI-shaped server takes a model's calls: URL and fixed headers."""

    def chat(self, model: Model) -> Endpoint: ...

    def embeddings(self, model: Model) -> Endpoint: ...


class OpenAIRoutes:
    """`{base_url}/chat/completions` and `/embeddings`, the key as a bearer token."""

    __slots__ = ("_chat", "_embeddings", "completions", "responses")

    def __init__(self, base_url: str, api_key: str | None) -> None:
        base = base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}  # encoded once, not per request
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._chat = Endpoint(base + "/chat/completions", headers)
        self._embeddings = Endpoint(base + "/embeddings", headers)
        # OpenAI's other endpoints (api/completions.py, api/responses.py): passed through.
        self.completions = Endpoint(base + "/completions", headers)
        self.responses = Endpoint(base + "/responses", headers)

    def chat(self, model: Model) -> Endpoint:
        return self._chat

    def embeddings(self, model: Model) -> Endpoint:
        return self._embeddings


class OpenAIProvider(Provider):
    """`routes` places the calls (default: `OpenAIRoutes`; Azure's per deployment)."""

    def __init__(
        self, name: str, config: ProviderConfig, api_key: str | None, routes: Routes | None = None
    ) -> None:
        super().__init__(name, config, api_key)
        self._routes = routes or OpenAIRoutes(config.base_url, api_key)
        self._redact = Redactor.for_provider(config.base_url, api_key)

    async def _post(self, endpoint: Endpoint, body: bytes) -> Response:
        return await post(self.pool, self.name, endpoint, body, self._redact)

    async def chat(self, call: ChatCall) -> Completion:
        endpoint = self._routes.chat(call.model)
        body = await read_all(self.name, await self._post(endpoint, build_body(call)))
        try:
            payload = _decode_fields(body)
            lite = _decode_lite(body)
        except msgspec.MsgspecError:
            raise malformed_response(self.name) from None
        finish = next((c.finish_reason for c in lite.choices if c.finish_reason), None)
        chars = sum(_text_chars(c) for c in lite.choices)
        return Completion(payload, to_usage(lite.usage), finish, chars)

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(self._routes.chat(call.model), build_body(call))
        return OpenAIStream(self.name, resp, self._redact)

    # -- other OpenAI endpoints, passed through (`api/completions.py`, `api/responses.py`)

    def _openai_routes(self, what: str, model: Model) -> OpenAIRoutes:
        routes = self._routes
        if not isinstance(routes, OpenAIRoutes):  # Azure's deployments place calls otherwise
            raise InvalidRequest(
                f"The model `{model.id}` does not serve `{what}`: its provider "
                f"`{self.name}` places only chat and embeddings calls.", param="model")
        return routes

    async def completions(self, call: ChatCall) -> Completion:
        """Legacy `/completions`: the body as the client sent it, `model` rewritten."""
        endpoint = self._openai_routes("/v1/completions", call.model).completions
        body = await read_all(self.name, await self._post(endpoint, build_body(call)))
        try:
            payload = _decode_fields(body)
            lite = _decode_lite(body)
        except msgspec.MsgspecError:
            raise malformed_response(self.name) from None
        finish = next((c.finish_reason for c in lite.choices if c.finish_reason), None)
        return Completion(payload, to_usage(lite.usage), finish, 0)

    async def completions_stream(self, call: ChatCall) -> ChatStream:
        # The same SSE shape as chat (`data:` chunks, the usage chunk, `[DONE]`).
        endpoint = self._openai_routes("/v1/completions", call.model).completions
        resp = await self._post(endpoint, build_body(call))
        return OpenAIStream(self.name, resp, self._redact)

    async def responses(self, body: bytes, model: Model) -> Completion:
        endpoint = self._openai_routes("/v1/responses", model).responses
        answer = await read_all(self.name, await self._post(endpoint, body))
        return responses_wire(answer, self.name)

    async def responses_stream(self, body: bytes, model: Model) -> ChatStream:
        endpoint = self._openai_routes("/v1/responses", model).responses
        resp = await self._post(endpoint, body)
        return ResponsesWireStream(self.name, resp, self._redact)

    async def embed(self, model: Model, fields: dict[str, Raw]) -> Embedding:
        fields = dict(fields)
        fields["model"] = encode_raw(model.upstream)
        resp = await self._post(self._routes.embeddings(model), _encode(fields))
        body = await read_all(self.name, resp)
        try:
            payload = _decode_fields(body)
            usage = _decode_usage(payload["usage"]) if "usage" in payload else None
        except (msgspec.MsgspecError, KeyError):
            raise malformed_response(self.name) from None
        return Embedding(payload, to_usage(usage))
