"""Anthropic SSE events -> OpenAI `chat.completion.chunk` payloads, and the stream around them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from msgspec import Raw

from ...errors import UpstreamError, malformed_event, stream_cut
from ...wire import encode_raw
from ..chunks import ChunkTranslator, TranslatedStream, chunk, chunk_head
from ..faults import event_status, map_error
from ..h1 import H1Error, Response
from ..http import transport_error
from ..redact import PATTERNS_ONLY, Redactor
from ..sse import SSEParser, frame
from .response import _AMessage, _AUsage, _Block, _chat_id, finish_reason, to_usage, usage_payload


class _Delta(msgspec.Struct):
    # content_block_delta and message_delta share the name `delta`, with different fields.
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _ErrorInner(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    message: _AMessage | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _AUsage | None = None
    error: _ErrorInner | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class StreamTranslator(ChunkTranslator):
    """Feeds on Anthropic stream events, returns OpenAI chunk payloads.

    All chunks share one id. The usage chunk is built, not returned, once `message_stop`
    arrives (see `ChatStream`); `end()` says whether the stream got that far.
    """

    __slots__ = (
        "_head",
        "_id",
        "_output",
        "_structured",
        "_tools",
        "_usage",
    )

    def __init__(
        self,
        model: str,
        provider: str = "anthropic",
        created: int | None = None,
        redact: Redactor = PATTERNS_ONLY,
        structured: str | None = None,
    ) -> None:
        super().__init__(model, provider, redact, created)
        # The `response_format` tool (request.structured_tool): its input streams as text.
        self._structured = structured
        self._output: int | None = None  # its Anthropic block index, once started
        self._usage = _AUsage()
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_call index
        self._set_id(_chat_id(""))

    def _set_id(self, chat_id: str) -> None:
        self._id = chat_id
        # Every chunk starts the same; encode that part once per stream.
        self._head = chunk_head(chat_id, self.created, self.model) + b'0,"delta":'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return chunk(self._head, delta, finish)

    def feed(self, event: bytes | None, data: bytes) -> list[bytes]:
        """One SSE event in (its `event:` name and `data:`), zero or more chunks out."""
        try:
            ev = _decode_event(data)
        except msgspec.MsgspecError:
            raise malformed_event(self.provider) from None
        kind = ev.type or (event or b"").decode()
        if kind == "content_block_delta" and ev.delta is not None:
            return self._block_delta(ev.index, ev.delta)
        if kind == "content_block_start" and ev.content_block is not None:
            return self._block_start(ev.index, ev.content_block)
        if kind == "message_start" and ev.message is not None:
            return self._message_start(ev.message)
        if kind == "message_delta":
            return self._message_delta(ev)
        if kind == "message_stop":
            self._finish()
        elif kind == "error":
            raise self._error(ev.error or _ErrorInner())
        # ping, content_block_stop and event types added later carry nothing to forward.
        return []

    def end(self) -> None:
        """The upstream stream closed; a stream without `message_stop` was cut short."""
        if not self.done:
            raise stream_cut(self.provider)

    def _message_start(self, msg: _AMessage) -> list[bytes]:
        if msg.id:
            self._set_id(_chat_id(msg.id))
        if msg.usage is not None:
            self._merge_usage(msg.usage)
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _block_start(self, index: int, block: _Block) -> list[bytes]:
        if block.type == "tool_use" and self._structured is not None \
                and block.name == self._structured:
            self._output = index
            return []
        if block.type == "tool_use":
            tool_index = self._tools[index] = len(self._tools)
            call = {
                "index": tool_index,
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.type == "text" and block.text:
            self.text_chars += len(block.text)
            return [self._chunk({"content": block.text})]
        return []

    def _block_delta(self, index: int, delta: _Delta) -> list[bytes]:
        if delta.type == "text_delta" and delta.text:
            self.text_chars += len(delta.text)
            return [self._chunk({"content": delta.text})]
        if delta.type == "input_json_delta" and delta.partial_json:
            self.text_chars += len(delta.partial_json)
            if index == self._output:
                return [self._chunk({"content": delta.partial_json})]
            call = {
                "index": self._tools.get(index, 0),
                "function": {"arguments": delta.partial_json},
            }
            return [self._chunk({"tool_calls": [call]})]
        if delta.type == "thinking_delta" and delta.thinking:
            # Thinking is billed as output, so it counts toward the estimate of a cut stream.
            self.text_chars += len(delta.thinking)
            return [self._chunk({"reasoning_content": delta.thinking})]
        return []  # signature_delta, citations_delta: nothing OpenAI-shaped to say

    def _message_delta(self, ev: _Event) -> list[bytes]:
        if ev.usage is not None:
            self._merge_usage(ev.usage)
        if ev.delta is None or ev.delta.stop_reason is None:
            return []
        self.finish_reason = finish_reason(ev.delta.stop_reason)
        if self.finish_reason == "tool_calls" and not self._tools and self._output is not None:
            self.finish_reason = "stop"  # only the output tool was called
        return [self._chunk({}, self.finish_reason)]

    def _merge_usage(self, u: _AUsage) -> None:
        # message_delta's counts are cumulative: a later value replaces an earlier one.
        mine = self._usage
        if u.input_tokens is not None:
            mine.input_tokens = u.input_tokens
        if u.output_tokens is not None:
            mine.output_tokens = u.output_tokens
        if u.cache_creation_input_tokens is not None:
            mine.cache_creation_input_tokens = u.cache_creation_input_tokens
        if u.cache_read_input_tokens is not None:
            mine.cache_read_input_tokens = u.cache_read_input_tokens

    def _finish(self) -> None:
        self.done = True
        self.usage = to_usage(self._usage)
        self.usage_chunk = {
            "id": encode_raw(self._id),
            "object": Raw(b'"chat.completion.chunk"'),
            "created": encode_raw(self.created),
            "model": encode_raw(self.model),
            "choices": Raw(b"[]"),
            "usage": encode_raw(usage_payload(self.usage)),
        }

    def _error(self, err: _ErrorInner) -> UpstreamError:
        # The status the same error would have had as an answer, so that routing and the
        # client judge both alike (after the first chunk the relay sends it as an event).
        status = event_status(err.type, None)
        return map_error(self.provider, status, err.message or err.type, err.type, None, None,
                         self.redact)


# ---------------------------------------------------------------------------------------
# I/O edge
# ---------------------------------------------------------------------------------------


class AnthropicStream(TranslatedStream[StreamTranslator]):
    def __init__(
        self, provider: str, model: str, resp: Response, redact: Redactor = PATTERNS_ONLY,
        structured: str | None = None,
    ) -> None:
        super().__init__(
            StreamTranslator(model, provider, redact=redact, structured=structured), resp
        )
        self._provider = provider

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        tr = self._translator
        try:
            async for data in self._resp:
                batch: list[bytes] = []
                for event, payload in parser.feed(data):
                    try:
                        batch += tr.feed(event, payload)
                    except UpstreamError:
                        if batch:
                            # what came before the error still reaches the client
                            yield frame(batch)
                        raise
                    finally:
                        self._sync()
                    if tr.done:
                        break
                if batch:
                    yield frame(batch)
                if tr.done:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        finally:
            self._resp.release() if tr.done else self._resp.close()
        tr.end()
