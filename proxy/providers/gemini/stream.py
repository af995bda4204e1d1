"""Gemini's SSE stream (`streamGenerateContent?alt=sse`) -> OpenAI chunks, and the stream.

Each event is a whole `GenerateContentResponse` holding what is new: text pieces,
function calls (each arrives whole, in one part), and on the last one `finishReason`;
`usageMetadata` is cumulative, so the last one seen is the call's. The stream has no end
marker: it ends with the body, and only a stream that reached a finish reason is whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from msgspec import Raw

from ...errors import UpstreamError, malformed_event, stream_cut
from ...wire import encode_raw
from ..chunks import ChunkTranslator, TranslatedStream, chunk_head
from ..h1 import H1Error, Response
from ..http import transport_error
from ..redact import PATTERNS_ONLY, Redactor
from ..sse import SSEParser, frame
from .errors import error_event
from .response import (
    GCandidate,
    GUsage,
    chat_id,
    decode_response,
    finish_reason,
    to_usage,
    tool_call_id,
    usage_payload,
)

_encode = msgspec.json.encode
_CONTENT_TAIL = b'},"logprobs":null,"finish_reason":null}]}'


class StreamTranslator(ChunkTranslator):
    """Feeds on Gemini stream events, returns OpenAI chunk payloads (one id for all)."""

    __slots__ = (
        "_content_head",
        "_head",
        "_id",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(
        self,
        model: str,
        provider: str = "gemini",
        created: int | None = None,
        redact: Redactor = PATTERNS_ONLY,
    ) -> None:
        super().__init__(model, provider, redact, created)
        self._usage: GUsage | None = None
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._tools: dict[int, int] = {}  # candidate index -> tool calls so far
        self._id = ""
        self._head = b""
        self._content_head = b""  # candidate 0's text chunk up to the text: the common chunk

    def _set_id(self, response_id: str | None) -> None:
        self._id = chat_id(response_id)
        self._head = chunk_head(self._id, self.created, self.model)
        self._content_head = self._head + b'0,"delta":{"content":'

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"".join((
            self._head, str(index).encode(), b',"delta":', _encode(delta),
            b',"logprobs":null,"finish_reason":', _encode(finish), b"}]}",
        ))

    def feed(self, data: bytes) -> list[bytes]:
        """One event's `data:` in, zero or more chunk payloads out."""
        if data.startswith(b'{"error"'):
            raise error_event(self.provider, data, self.redact)
        try:
            resp = decode_response(data)
        except msgspec.MsgspecError:
            raise malformed_event(self.provider) from None
        if not self._head:
            self._set_id(resp.response_id)
        if resp.usage_metadata is not None:
            self._usage = resp.usage_metadata
        out: list[bytes] = []
        if not resp.candidates and resp.prompt_feedback is not None and (
            resp.prompt_feedback.block_reason is not None
        ):
            out += self._start(0)
            self.finish_reason = "content_filter"
            out.append(self._chunk(0, {}, "content_filter"))
        for candidate in resp.candidates:
            out += self._candidate(candidate)
        return out

    def _start(self, index: int) -> list[bytes]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": "", "refusal": None})]

    def _candidate(self, c: GCandidate) -> list[bytes]:
        out = self._start(c.index) if c.index not in self._started else []
        for part in c.content.parts if c.content else ():
            if part.text and not part.thought and c.index == 0:
                # The common event, one piece of text, without a dict to encode.
                self.text_chars += len(part.text)
                out.append(b"".join((self._content_head, _encode(part.text), _CONTENT_TAIL)))
            elif part.function_call is not None:
                fc = part.function_call
                n = self._tools.get(c.index, 0)
                self._tools[c.index] = n + 1
                arguments = bytes(fc.args).decode()
                self.text_chars += len(arguments)
                call = {
                    "index": n,
                    "id": tool_call_id(fc, part.thought_signature),
                    "type": "function",
                    "function": {"name": fc.name, "arguments": arguments},
                }
                out.append(self._chunk(c.index, {"tool_calls": [call]}))
            elif part.text:
                self.text_chars += len(part.text)
                key = "reasoning_content" if part.thought else "content"
                out.append(self._chunk(c.index, {key: part.text}))
        if c.finish_reason is None:
            return out
        finish = finish_reason(c.finish_reason, c.index in self._tools)
        if finish is not None:
            self.finish_reason = self.finish_reason or finish
            out.append(self._chunk(c.index, {}, finish))
        return out

    def end(self) -> None:
        """The body ended: whole if a finish reason came, else cut short."""
        if self.finish_reason is None:
            raise stream_cut(self.provider)
        self.done = True
        if self._usage is None:
            return  # no usage reported: the gateway estimates it
        self.usage = to_usage(self._usage)
        self.usage_chunk = {
            "id": encode_raw(self._id),
            "object": Raw(b'"chat.completion.chunk"'),
            "created": encode_raw(self.created),
            "model": encode_raw(self.model),
            "choices": Raw(b"[]"),
            "usage": encode_raw(usage_payload(self._usage)),
        }


class GeminiStream(TranslatedStream[StreamTranslator]):
    """Iterated, or pushed (`push`: each read translated and handed to the sink in the
    connection's callback, no task switch a read); both share one parser and translator,
    so iterating carries on where a push stopped. The body's end is the stream's end."""

    def __init__(
        self, provider: str, model: str, resp: Response, redact: Redactor = PATTERNS_ONLY
    ) -> None:
        super().__init__(StreamTranslator(model, provider, redact=redact), resp)
        self._provider = provider
        self._parser = SSEParser()
        self._sink: Callable[[bytes], bool] = _not_pushing
        self._push_error: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        tr = self._translator
        ended = False
        try:
            async for data in self._resp:
                batch: list[bytes] = []
                for _event, payload in self._parser.feed(data):
                    try:
                        batch += tr.feed(payload)
                    except UpstreamError:
                        self._sync()
                        if batch:
                            yield frame(batch)  # what came before the error reaches the client
                        raise
                self._sync()
                if batch:
                    yield frame(batch)
            ended = True
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        finally:
            self._resp.release() if ended else self._resp.close()
        tr.end()
        self._sync()

    async def push(self, sink: Callable[[bytes], bool]) -> None:
        """Until the body ends (iterating then finds the end and accounts it), the sink
        falls behind, or an error event: raised here, after what came before it."""
        self._sink = sink
        try:
            await self._resp.push(self._pushed)
        finally:
            self._sink = _not_pushing
        error, self._push_error = self._push_error, None
        if error is not None:
            self._resp.close()
            raise error

    def _pushed(self, data: bytes) -> bool:
        """The connection's receiver: True while the client keeps up. Must not raise."""
        batch: list[bytes] = []
        try:
            for _event, payload in self._parser.feed(data):
                batch += self._translator.feed(payload)
        except Exception as e:  # noqa: BLE001 - raised again from push(), not in the parser
            self._push_error = e
        self._sync()
        if batch and not self._sink(frame(batch)):
            return False
        return self._push_error is None


def _not_pushing(_: bytes) -> bool:
    return False
