"""Converse stream events -> OpenAI `chat.completion.chunk` payloads, and the stream around them.

`converse-stream` answers `application/vnd.amazon.eventstream`: binary frames (a prelude
with lengths and a CRC, typed headers, a JSON payload, a CRC of the whole), decoded by
botocore's `EventStreamBuffer`. Each frame is an event (`:event-type` messageStart,
contentBlockStart, contentBlockDelta, contentBlockStop, messageStop, metadata) or an
exception (`:message-type: exception`, `:exception-type` throttlingException, ...).
The usage arrives last, in `metadata`, after `messageStop`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
from botocore.eventstream import EventStreamBuffer, ParserError
from msgspec import Raw

from ...errors import UpstreamError, malformed_event, stream_cut
from ...wire import encode_raw
from ..anthropic import usage_payload
from ..chunks import ChunkTranslator, TranslatedStream, chunk, chunk_head
from ..h1 import H1Error
from ..http import transport_error
from ..redact import Redactor
from ..sse import frame
from .faults import stream_exception
from .response import CUsage, chat_id, finish_reason, to_usage

_encode = msgspec.json.encode


class _ToolStart(msgspec.Struct, rename="camel"):
    tool_use_id: str = ""
    name: str = ""


class _Start(msgspec.Struct, rename="camel"):
    tool_use: _ToolStart | None = None


class _ToolDelta(msgspec.Struct):
    input: str = ""


class _ReasoningDelta(msgspec.Struct):
    text: str | None = None


class _Delta(msgspec.Struct, rename="camel"):
    text: str | None = None
    tool_use: _ToolDelta | None = None
    reasoning_content: _ReasoningDelta | None = None


class _Event(msgspec.Struct, rename="camel"):
    """Every event's fields in one shape: each event type fills its own."""

    content_block_index: int = 0
    start: _Start | None = None
    delta: _Delta | None = None
    stop_reason: str | None = None
    usage: CUsage | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class ConverseTranslator(ChunkTranslator):
    """Feeds on decoded Converse stream frames, returns OpenAI chunk payloads.

    All chunks share one id. `messageStop` gives the finish chunk; `metadata` (the last
    event) the usage, built into the usage chunk, not returned (see `ChatStream`).
    """

    __slots__ = (
        "_head",
        "_id",
        "_tools",
        "stopped",
    )

    def __init__(
        self,
        model: str,
        provider: str,
        redact: Redactor,
        request_id: str | None = None,
        created: int | None = None,
    ) -> None:
        super().__init__(model, provider, redact, created)
        self.stopped = False  # messageStop came: the answer is whole, usage may follow
        # `done` (set by ChunkTranslator): metadata came, nothing more follows.
        self._tools: dict[int, int] = {}  # Converse block index -> OpenAI tool_call index
        self._id = chat_id(request_id)
        # Every chunk starts the same; encode that part once per stream.
        self._head = chunk_head(self._id, self.created, model) + b'0,"delta":'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return chunk(self._head, delta, finish)

    def feed(self, headers: dict[str, Any], payload: bytes) -> list[bytes]:
        """One frame in (its headers and payload), zero or more chunks out."""
        if headers.get(":message-type") != "event":
            if headers.get(":message-type") == "error":  # the eventstream's own error frame
                message = str(headers.get(":error-message") or "")
                payload = _encode({"message": message})
            kind = headers.get(":exception-type") or headers.get(":error-code")
            raise stream_exception(self.provider, kind, payload, self.redact)
        try:
            ev = _decode_event(payload)
        except msgspec.MsgspecError:
            raise malformed_event(self.provider) from None
        kind = headers.get(":event-type")
        if kind == "contentBlockDelta" and ev.delta is not None:
            return self._delta(ev.content_block_index, ev.delta)
        if kind == "contentBlockStart" and ev.start is not None and ev.start.tool_use is not None:
            tool = ev.start.tool_use
            index = self._tools[ev.content_block_index] = len(self._tools)
            call = {"index": index, "id": tool.tool_use_id, "type": "function",
                    "function": {"name": tool.name, "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "messageStart":
            return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        if kind == "messageStop":
            self.stopped = True
            self.finish_reason = finish_reason(ev.stop_reason) or "stop"
            return [self._chunk({}, self.finish_reason)]
        if kind == "metadata":
            self._finish(ev.usage)
        # contentBlockStop and event types added later carry nothing to forward.
        return []

    def _delta(self, index: int, delta: _Delta) -> list[bytes]:
        if delta.text:
            self.text_chars += len(delta.text)
            return [self._chunk({"content": delta.text})]
        if delta.tool_use is not None and delta.tool_use.input:
            self.text_chars += len(delta.tool_use.input)
            call = {"index": self._tools.get(index, 0),
                    "function": {"arguments": delta.tool_use.input}}
            return [self._chunk({"tool_calls": [call]})]
        if delta.reasoning_content is not None and delta.reasoning_content.text:
            # Reasoning is billed as output: it counts toward the estimate of a cut stream.
            self.text_chars += len(delta.reasoning_content.text)
            return [self._chunk({"reasoning_content": delta.reasoning_content.text})]
        return []  # a reasoning signature, a citation: nothing OpenAI-shaped to say

    def _finish(self, usage: CUsage | None) -> None:
        self.done = True
        if usage is None:
            return  # the gateway estimates
        self.usage = to_usage(usage)
        self.usage_chunk = {
            "id": encode_raw(self._id),
            "object": Raw(b'"chat.completion.chunk"'),
            "created": encode_raw(self.created),
            "model": encode_raw(self.model),
            "choices": Raw(b"[]"),
            "usage": encode_raw(usage_payload(self.usage)),
        }

    def end(self) -> None:
        """The upstream stream closed: without `messageStop` it was cut short."""
        if not self.stopped:
            raise stream_cut(self.provider)
        self.done = True


class BedrockStream(TranslatedStream[ConverseTranslator]):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        frames = EventStreamBuffer()
        tr = self._translator
        try:
            async for data in self._resp:
                frames.add_data(data)
                batch: list[bytes] = []
                try:
                    for message in frames:
                        # botocore-stubs types `headers` as int; botocore sets the dict its
                        # header parser returns.
                        headers = cast("dict[str, Any]", message.headers)
                        batch += tr.feed(headers, message.payload)
                        if tr.done:
                            break
                except (ParserError, UpstreamError) as e:
                    self._sync()
                    if batch:
                        yield frame(batch)  # what came before the error still reaches the client
                    if isinstance(e, UpstreamError):
                        raise
                    raise UpstreamError(
                        f"Upstream provider `{tr.provider}` sent a malformed event frame.",
                        reason="malformed",
                    ) from None
                self._sync()
                if batch:
                    yield frame(batch)
                if tr.done:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(tr.provider, e) from None
        finally:
            self._resp.release() if tr.done else self._resp.close()
        tr.end()
        self._sync()
