"""Chat Completions chunks -> Anthropic Messages SSE events, one chunk at a time.

Anthropic's order: `message_start`, then per content block `content_block_start`,
its deltas and `content_block_stop` (the first block followed by a `ping`), then
`message_delta` (stop reason and usage) and `message_stop`. Chat interleaves nothing
Anthropic cannot say in that order, except a provider that resumes an earlier tool call
after starting the next: its deltas still go to that call's block, by index, which is
how Anthropic's SDKs assemble blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec

from ..chat import ChatChoice, ChatMessage, ChatToolCall, Tokens
from ..stream import ChunkReader
from .response import message_id, stop_reason, usage

_encode = msgspec.json.encode

Kind = Literal["text", "thinking", "tool_use"]

_PING: Final = b'event: ping\ndata: {"type":"ping"}\n\n'
_DELTA_HEAD: Final = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"".join((b"event: ", name.encode(), b"\ndata: ", _encode(payload), b"\n\n"))


class MessagesStream:
    """Fed decoded Chat chunks (`feed`) and the end of the upstream stream (`finish`);
    each returns the Anthropic events it makes, as SSE bytes, at once.

    A `ChunkReader` keeps the chat stream's order (`message_delta` goes out when the
    stop reason and the usage are both in, or at `finish` for a provider that sends no
    usage); `_Events` writes the Anthropic events at each point of it. `feed` and
    `finish` are the reader's own bound methods: no call of this class's in between.
    """

    __slots__ = ("_reader", "feed", "finish")

    feed: Callable[[bytes | dict[str, Any]], bytes]
    finish: Callable[[], bytes]

    def __init__(
        self,
        model: str,
        stop_sequences: list[str] | None = None,
        input_tokens: int = 0,
        provider: str = "upstream",
    ) -> None:
        self._reader = reader = ChunkReader(_Events(model, stop_sequences, input_tokens),
                                            provider)
        self.feed = reader.feed
        self.finish = reader.finish

    @property
    def done(self) -> bool:
        return self._reader.done


class _Events:
    """The Anthropic events at each point of the chat stream (`EventWriter`)."""

    __slots__ = (
        "_blocks",
        "_open",
        "_open_kind",
        "_pinged",
        "_stop_sequences",
        "_tools",
        "input_tokens",
        "model",
    )

    def __init__(
        self, model: str, stop_sequences: list[str] | None, input_tokens: int
    ) -> None:
        self.model = model
        # What message_start says before the usage chunk brings the count (an estimate).
        self.input_tokens = input_tokens
        self._stop_sequences = stop_sequences
        self._pinged = False
        self._blocks = 0  # content blocks started so far
        self._open: int | None = None  # index of the block still open
        self._open_kind: Kind | None = None
        # Chat tool_call index -> (Anthropic block index, call id)
        self._tools: dict[int, tuple[int, str]] = {}

    def start(self, chat_id: str, out: list[bytes]) -> None:
        message: dict[str, Any] = {
            "id": message_id(chat_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        out.append(event("message_start", {"type": "message_start", "message": message}))

    def delta(self, d: ChatMessage, out: list[bytes]) -> None:
        thinking = d.thinking
        if thinking:
            self._delta("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                        b'"thinking_delta","thinking":', thinking, out)
        text = d.content or d.refusal
        if text:
            self._delta("text", {"type": "text", "text": ""}, b'"text_delta","text":',
                        text, out)
        for call in d.tool_calls or ():
            self._tool_call(call, out)

    def stop(self, finish: ChatChoice, out: list[bytes]) -> None:
        self._stop_block(out)

    def _delta(
        self, kind: Kind, start: dict[str, Any], head: bytes, text: str, out: list[bytes]
    ) -> None:
        if self._open_kind != kind:
            self._start_block(kind, start, out)
        out.append(self._delta_event(self._open or 0, head, text))

    def _tool_call(self, call: ChatToolCall, out: list[bytes]) -> None:
        known = self._tools.get(call.index)
        fn = call.function
        if known is None or (call.id and call.id != known[1]):
            # A new id at a known index is a new call: some providers send every call
            # whole, each at index 0.
            call_id = call.id or "toolu_" + uuid.uuid4().hex
            block = {
                "type": "tool_use",
                "id": call_id,
                "name": fn.name if fn and fn.name else "",
                "input": {},
            }
            known = self._tools[call.index] = (self._start_block("tool_use", block, out), call_id)
        index = known[0]
        if fn is not None and fn.arguments:
            out.append(self._delta_event(index, b'"input_json_delta","partial_json":',
                                         fn.arguments))

    def _start_block(self, kind: Kind, block: dict[str, Any], out: list[bytes]) -> int:
        self._stop_block(out)
        index = self._blocks
        self._blocks += 1
        self._open, self._open_kind = index, kind
        out.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        if not self._pinged:
            self._pinged = True
            out.append(_PING)
        return index

    def _stop_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(
                event("content_block_stop", {"type": "content_block_stop", "index": self._open})
            )
            self._open = self._open_kind = None

    @staticmethod
    def _delta_event(index: int, head: bytes, text: str) -> bytes:
        # The hot event: built from pre-encoded parts, only the text is encoded.
        return b"".join(
            (_DELTA_HEAD, str(index).encode(), b',"delta":{"type":', head, _encode(text),
             b"}}\n\n")
        )

    def close(self, finish: ChatChoice, tokens: Tokens | None, out: list[bytes]) -> None:
        self._stop_block(out)
        reason, sequence = stop_reason(finish, self._stop_sequences)
        counts = usage(tokens) if tokens is not None else {"output_tokens": 0}
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": counts,
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
