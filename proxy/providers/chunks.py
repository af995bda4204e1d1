"""OpenAI `chat.completion.chunk` building and the stream shell shared by the translated
adapters (Anthropic, Bedrock Converse, Gemini): each has its own translator (upstream
events in, chunk payloads out); what surrounds it is the same."""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar

import msgspec
from msgspec import Raw

from ..catalog import Usage
from .base import ChatStream
from .h1 import Response
from .redact import Redactor

_encode = msgspec.json.encode


def chunk_head(chat_id: str, created: int, model: str) -> bytes:
    """A chunk's bytes up to its choice's index: the same for every chunk of a stream, so
    a translator encodes it once per stream."""
    return b"".join((
        b'{"id":', _encode(chat_id),
        b',"object":"chat.completion.chunk","created":', str(created).encode(),
        b',"model":', _encode(model),
        b',"choices":[{"index":',
    ))


def chunk(head: bytes, delta: dict[str, Any], finish: str | None) -> bytes:
    """One chunk payload: `head` is the chunk up to its `delta` (`chunk_head` + index)."""
    return b"".join((head, _encode(delta), b',"logprobs":null,"finish_reason":',
                     _encode(finish), b"}]}"))


class ChunkTranslator:
    """A translator's common state: whom it speaks for, and what it has learnt so far,
    which its stream mirrors for the relay (`TranslatedStream._sync`)."""

    __slots__ = (
        "created",
        "done",
        "finish_reason",
        "model",
        "provider",
        "redact",
        "text_chars",
        "usage",
        "usage_chunk",
    )

    def __init__(self, model: str, provider: str, redact: Redactor, created: int | None) -> None:
        self.model = model
        self.provider = provider
        self.redact = redact
        self.created = int(time.time()) if created is None else created
        self.usage: Usage | None = None
        self.usage_chunk: dict[str, Raw] | None = None
        self.finish_reason: str | None = None
        self.text_chars = 0
        self.done = False


T = TypeVar("T", bound=ChunkTranslator)


class TranslatedStream(ChatStream, Generic[T]):
    """A stream whose chunks one translator makes from one upstream response."""

    def __init__(self, translator: T, resp: Response) -> None:
        super().__init__()
        self._translator = translator
        self._resp = resp

    def _sync(self) -> None:
        # The relay reads these off the stream, even when iterating raised.
        tr = self._translator
        self.usage, self.usage_chunk = tr.usage, tr.usage_chunk
        self.finish_reason, self.text_chars = tr.finish_reason, tr.text_chars
        self.finished = tr.done

    async def aclose(self) -> None:
        self._resp.close()
