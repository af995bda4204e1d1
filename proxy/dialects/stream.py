"""The order of a Chat chunk stream, as every dialect's stream reads it.

A chat stream opens with its first chunk, brings deltas, a finish reason on one chunk
and the usage on that chunk or after it (the request asks for `include_usage`), then
ends (`[DONE]` or a clean close). `ChunkReader` keeps that order once; a dialect writes
its events at each point of it (`EventWriter`): the Messages and Responses streams.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import stream_cut
from .chat import ChatChoice, ChatMessage, Tokens, completion


class EventWriter(Protocol):
    """A dialect's events, appended to `out` as SSE bytes at each point of the stream."""

    def start(self, chat_id: str, out: list[bytes]) -> None:
        """The first chunk: the dialect's opening events."""

    def delta(self, delta: ChatMessage, out: list[bytes]) -> None:
        """A choice's delta: its text, reasoning and tool-call events."""

    def stop(self, finish: ChatChoice, out: list[bytes]) -> None:
        """The finish reason came (after its chunk's delta): close what is open."""

    def close(self, finish: ChatChoice, tokens: Tokens | None, out: list[bytes]) -> None:
        """The answer is whole: the closing events, with the usage if the provider sent it."""


class ChunkReader:
    """Fed decoded Chat chunks (`feed`) and the end of the upstream stream (`finish`);
    each returns the events `writer` makes, as SSE bytes, at once.

    The stop reason comes with the finish chunk and the usage after it, so the closing
    events go out when both are in, or at `finish` for a provider that sends no usage.
    """

    __slots__ = ("_finish", "_started", "_tokens", "done", "provider", "writer")

    def __init__(self, writer: EventWriter, provider: str = "upstream") -> None:
        self.writer = writer
        self.provider = provider
        self.done = False
        self._started = False
        self._finish: ChatChoice | None = None
        self._tokens: Tokens | None = None

    def feed(self, chunk: bytes | dict[str, Any]) -> bytes:
        c = completion(chunk, self.provider)
        if self.done:
            return b""
        out: list[bytes] = []
        writer = self.writer
        if not self._started:
            self._started = True
            writer.start(c.id, out)
        if c.choices:
            choice = c.choices[0]
            if choice.delta is not None:
                writer.delta(choice.delta, out)
            if choice.finish_reason is not None and self._finish is None:
                self._finish = choice
                writer.stop(choice, out)
        if c.usage is not None:
            self._tokens = Tokens.of(c.usage)
        if self._finish is not None and self._tokens is not None:
            self.done = True
            writer.close(self._finish, self._tokens, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream stream ended (`[DONE]` or a clean close)."""
        if self.done:
            return b""
        if self._finish is None:
            raise stream_cut(self.provider)
        out: list[bytes] = []
        self.done = True
        self.writer.close(self._finish, self._tokens, out)
        return b"".join(out)
