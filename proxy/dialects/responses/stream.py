"""Chat Completions chunks -> OpenAI Responses SSE events, one chunk at a time.

OpenAI's order: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its part and deltas (`response.output_text.delta`,
`response.function_call_arguments.delta`, `response.reasoning_text.delta`,
`response.refusal.delta`), their
`.done` events and `response.output_item.done`; last `response.completed` (or
`response.incomplete` when the output was cut by `max_output_tokens`). Every event has
the next `sequence_number`. The `.done` events repeat an item's whole text, so the open
item's text is kept until it closes; nothing else is held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec

from ...errors import ApiError
from ..chat import ChatChoice, ChatMessage, ChatToolCall, Tokens
from ..stream import ChunkReader
from .request import ResponsesRequest
from .response import (
    envelope,
    function_item,
    message_item,
    new_id,
    reasoning_item,
    status_of,
    usage,
)

_encode = msgspec.json.encode

# A refusal is a message item whose part is a `refusal`, with events of its own.
Kind = Literal["message", "refusal", "reasoning", "function_call"]
# The name of each kind of item's text events, and of the text in its `.done` event.
_TEXT_EVENT: Final = {
    "message": "response.output_text",
    "refusal": "response.refusal",
    "reasoning": "response.reasoning_text",
    "function_call": "response.function_call_arguments",
}
_DONE_FIELD: Final = {"message": "text", "refusal": "refusal", "reasoning": "text"}


class _Item:
    __slots__ = ("_parts", "call_id", "id", "index", "kind", "name", "status")

    def __init__(self, kind: Kind, item_id: str) -> None:
        self.kind: Kind = kind
        self.id = item_id
        self.index = 0
        self.status = "in_progress"
        self.call_id = ""
        self.name = ""
        # Output text, reasoning text or call arguments so far, joined when the item
        # closes (appending to one string would copy it at every delta).
        self._parts: list[str] = []

    def append(self, text: str) -> None:
        self._parts.append(text)

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def as_dict(self) -> dict[str, Any]:
        if self.kind in ("message", "refusal"):
            return message_item(self.id, self.text, self.status, self.kind == "refusal")
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text, self.status)
        return function_item(self.id, self.call_id, self.name, self.text, self.status)

    def added(self) -> dict[str, Any]:
        item = self.as_dict()
        if self.kind != "function_call":
            item["content"] = []  # its part arrives in content_part.added
        return item


class ResponsesStream:
    """Fed decoded Chat chunks (`feed`) and the end of the upstream stream (`finish`);
    each returns the Responses events it makes, as SSE bytes, at once.

    A `ChunkReader` keeps the chat stream's order; `_Events` writes the Responses events
    at each point of it. `feed` and `finish` are the reader's own bound methods: no call
    of this class's in between.
    """

    __slots__ = ("_events", "_reader", "feed", "finish")

    feed: Callable[[bytes | dict[str, Any]], bytes]
    finish: Callable[[], bytes]

    def __init__(
        self,
        req: ResponsesRequest,
        model: str,
        provider: str = "upstream",
        created_at: int | None = None,
    ) -> None:
        self._events = events = _Events(req, model, created_at)
        self._reader = reader = ChunkReader(events, provider)
        self.feed = reader.feed
        self.finish = reader.finish

    @property
    def done(self) -> bool:
        return self._reader.done

    def error(self, err: ApiError) -> bytes:
        """`error` then `response.failed`, for a stream that fails after its 200."""
        self._reader.done = True
        return self._events.error(err)


class _Events:
    """The Responses events at each point of the chat stream (`EventWriter`)."""

    __slots__ = (
        "_finish",
        "_open",
        "_output",
        "_req",
        "_seq",
        "_tools",
        "created_at",
        "id",
        "model",
    )

    def __init__(self, req: ResponsesRequest, model: str, created_at: int | None) -> None:
        self._req = req
        self.model = model
        self.id = new_id("resp")
        self.created_at = int(time.time()) if created_at is None else created_at
        self._seq = 0
        self._output: list[_Item] = []
        self._open: _Item | None = None
        self._tools: dict[int, _Item] = {}  # Chat tool_call index -> its item
        self._finish: ChatChoice | None = None

    def start(self, chat_id: str, out: list[bytes]) -> None:
        self._lifecycle("response.created", "in_progress", out)
        self._lifecycle("response.in_progress", "in_progress", out)

    def error(self, err: ApiError) -> bytes:
        out = [self._event("error", {"code": err.code, "message": err.message,
                                     "param": err.param})]
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        failed = self._snapshot("failed")
        failed["error"] = {"code": code, "message": err.message}
        out.append(self._event("response.failed", {"response": failed}))
        return b"".join(out)

    # -- items ----------------------------------------------------------------------

    def delta(self, d: ChatMessage, out: list[bytes]) -> None:
        if d.thinking:
            self._text("reasoning", d.thinking, out)
        if d.content:
            self._text("message", d.content, out)
        if d.refusal:
            self._text("refusal", d.refusal, out)
        for call in d.tool_calls or ():
            self._tool_call(call, out)

    def stop(self, finish: ChatChoice, out: list[bytes]) -> None:
        self._finish = finish
        self._close_item(out)

    def _text(self, kind: Kind, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != kind:
            item = self._start(kind, out)
        item.append(text)
        out.append(self._event(_TEXT_EVENT[kind] + ".delta", self._delta(item, text)))

    def _tool_call(self, call: ChatToolCall, out: list[bytes]) -> None:
        item = self._tools.get(call.index)
        fn = call.function
        if item is None or (call.id and call.id != item.call_id):
            # A new id at a known index is a new call: some providers send every call
            # whole, each at index 0.
            item = self._tools[call.index] = _Item("function_call", new_id("fc"))
            item.call_id = call.id or new_id("call")
            item.name = fn.name if fn and fn.name else ""
            self._start_item(item, out)
        if fn is not None and fn.arguments:
            item.append(fn.arguments)
            out.append(self._event("response.function_call_arguments.delta",
                                   self._delta(item, fn.arguments)))

    def _start(self, kind: Kind, out: list[bytes]) -> _Item:
        item = _Item(kind, new_id("rs" if kind == "reasoning" else "msg"))
        self._start_item(item, out)
        return item

    def _start_item(self, item: _Item, out: list[bytes]) -> None:
        self._close_item(out)
        item.index = len(self._output)
        self._output.append(item)
        self._open = item
        out.append(self._event("response.output_item.added",
                               {"output_index": item.index, "item": item.added()}))
        if item.kind != "function_call":
            part = item.as_dict()["content"][0]  # its empty part
            out.append(self._event("response.content_part.added", self._part(item, part)))

    def _close_item(self, out: list[bytes]) -> None:
        item = self._open
        if item is None:
            return
        self._open = None
        # An item still open when the output was cut is incomplete, as OpenAI marks it.
        item.status = status_of(self._finish)[0] if self._finish is not None else "completed"
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out.append(self._event("response.function_call_arguments.done",
                                   {**where, "arguments": item.text, "name": item.name}))
        else:
            done: dict[str, Any] = {**where, "content_index": 0,
                                    _DONE_FIELD[item.kind]: item.text}
            if item.kind == "message":
                done["logprobs"] = []
            out.append(self._event(_TEXT_EVENT[item.kind] + ".done", done))
            part = item.as_dict()["content"][0]
            out.append(self._event("response.content_part.done", self._part(item, part)))
        out.append(self._event("response.output_item.done",
                               {"output_index": item.index, "item": item.as_dict()}))

    # -- the response ---------------------------------------------------------------

    def close(self, finish: ChatChoice, tokens: Tokens | None, out: list[bytes]) -> None:
        self._close_item(out)
        status, incomplete = status_of(finish)
        snapshot = self._snapshot(status, incomplete)
        snapshot["usage"] = usage(tokens or Tokens())
        name = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(name, {"response": snapshot}))

    def _snapshot(
        self, status: str, incomplete: dict[str, str] | None = None
    ) -> dict[str, Any]:
        output = [i.as_dict() for i in self._output if i is not self._open]
        return envelope(self.id, self.created_at, self._req, self.model, status, output,
                        incomplete=incomplete)

    def _lifecycle(self, name: str, status: str, out: list[bytes]) -> None:
        out.append(self._event(name, {"response": self._snapshot(status)}))

    # -- events ---------------------------------------------------------------------

    @staticmethod
    def _delta(item: _Item, text: str) -> dict[str, Any]:
        delta: dict[str, Any] = {"item_id": item.id, "output_index": item.index, "delta": text}
        if item.kind != "function_call":
            delta["content_index"] = 0
        if item.kind == "message":
            delta["logprobs"] = []
        return delta

    @staticmethod
    def _part(item: _Item, part: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0,
                "part": part}

    def _event(self, name: str, payload: dict[str, Any]) -> bytes:
        seq = self._seq
        self._seq += 1
        body = _encode({"type": name, "sequence_number": seq, **payload})
        return b"".join((b"event: ", name.encode(), b"\ndata: ", body, b"\n\n"))
