"""OpenAI's Responses API passed through (`/v1/responses` of a provider marked
`responses_api = true`): the body and the events as they are, read for accounting.

The usage is in the last event (`response.completed`, `response.incomplete`,
`response.failed`) or the answer's `usage`: `input_tokens` includes cached tokens, as
`prompt_tokens` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from msgspec import Raw

from ..catalog import Usage
from ..errors import UpstreamError, malformed_event, malformed_response, stream_cut
from .base import Completion
from .faults import error_event, event_status, map_error
from .h1 import H1Error, Response
from .http import transport_error
from .redact import PATTERNS_ONLY, Redactor
from .sse import SSEParser, parse
from .wire import WireCompletion, WireStream

_decode_fields = msgspec.json.Decoder(dict[str, Raw]).decode
_encode = msgspec.json.encode
_ENDS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TEXT_DELTAS: Final = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta",
    "response.reasoning_text.delta", "response.refusal.delta",
})


class _InDetails(msgspec.Struct):
    cached_tokens: int = 0


class _RUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _InDetails | None = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _RResponse(msgspec.Struct):
    status: str | None = None
    usage: _RUsage | None = None
    incomplete_details: _Incomplete | None = None


class _REvent(msgspec.Struct):
    type: str = ""
    delta: Any = None
    response: _RResponse | None = None
    message: str | None = None
    code: str | None = None


_decode_response = msgspec.json.Decoder(_RResponse).decode
_decode_event = msgspec.json.Decoder(_REvent).decode


def usage_of(u: _RUsage | None) -> Usage | None:
    if u is None:
        return None
    cached = u.input_tokens_details.cached_tokens if u.input_tokens_details else 0
    return Usage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
                 cached_tokens=cached)


def finish_of(r: _RResponse) -> str | None:
    """The chat finish reason a response's status stands for (the ledger's word)."""
    if r.status == "completed":
        return "stop"
    if r.status == "incomplete":
        reason = r.incomplete_details.reason if r.incomplete_details else None
        return "content_filter" if reason == "content_filter" else "length"
    return r.status


def to_wire_completion(body: bytes, provider: str) -> Completion:
    try:
        payload = _decode_fields(body)
        r = _decode_response(body)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None
    return WireCompletion(payload, usage_of(r.usage), finish_of(r), 0)


class ResponsesWireStream(WireStream):
    """The provider's Responses events, each run forwarded as it was read."""

    def __init__(self, provider: str, resp: Response, redact: Redactor = PATTERNS_ONLY) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._redact = redact
        self._seq = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        try:
            async for data in self._resp:
                complete = parser.take(data)
                if not complete:
                    continue
                sent = 0
                try:
                    for _event, payload in parse(complete):
                        self._read(payload)
                        sent += 1
                except UpstreamError:
                    if sent:  # the events before the error still reach the client
                        yield b"\n\n".join(complete.split(b"\n\n")[:sent]) + b"\n\n"
                    raise
                yield complete
                if self.finished:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        finally:
            self._resp.release() if self.finished else self._resp.close()
        if not self.finished:
            raise stream_cut(self._provider)

    def _read(self, payload: bytes) -> None:
        if payload.startswith(b'{"error"'):
            # A compatible server's chat-style error event: mapped, sent in this dialect.
            raise error_event(self._provider, payload, self._redact)
        try:
            ev = _decode_event(payload)
        except msgspec.MsgspecError:
            raise malformed_event(self._provider) from None
        self._seq += 1
        if ev.type in _TEXT_DELTAS and isinstance(ev.delta, str):
            self.text_chars += len(ev.delta)
        elif ev.type in _ENDS and ev.response is not None:
            self.usage = usage_of(ev.response.usage)
            self.finish_reason = finish_of(ev.response)
            self.finished = True
        elif ev.type == "error":
            kind = ev.code or "server_error"
            raise map_error(self._provider, event_status(kind, None), ev.message or kind,
                            kind, None, None, self._redact)

    def error_event(self, error: UpstreamError) -> bytes:
        body = _encode({"type": "error", "sequence_number": self._seq, "code": error.code,
                        "message": error.message, "param": None})
        return b"event: error\ndata: " + body + b"\n\n"

    async def aclose(self) -> None:
        self._resp.close()
