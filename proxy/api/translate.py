"""A chat stream seen through a dialect: each run of upstream chunks becomes the dialect's
events as it arrives (`dialects.messages.MessagesStream`, `dialects.responses.ResponsesStream`).

Only non-chat dialects pay for this: the chat route pipes the provider's stream as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec

from ..errors import UpstreamError
from ..providers.base import ChatStream
from ..providers.sse import payloads
from ..providers.wire import WireStream

_encode = msgspec.json.encode


class Translator(Protocol):
    """What `MessagesStream` and `ResponsesStream` share: chunks in, events out."""

    @property
    def done(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class TranslatedStream(WireStream):
    """The dialect's events for an upstream chat stream (of any provider protocol)."""

    def __init__(self, inner: ChatStream, translator: Translator,
                 error_event: Callable[[UpstreamError], bytes]) -> None:
        super().__init__()
        self._inner = inner
        self._tr = translator
        self._error_event = error_event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner, tr = self._inner, self._tr
        try:
            async for run in inner:
                out = b"".join([tr.feed(data) for data in payloads(run)])
                self._sync()
                if out:
                    yield out
        finally:
            self._sync()
        # The provider's usage chunk (held back by the chat stream) fills the dialect's
        # final usage; then the closing events, unless the chunks already closed it.
        tail = tr.feed(_encode(inner.usage_chunk)) if inner.usage_chunk is not None else b""
        tail += tr.finish()
        self.finished = True
        if tail:
            yield tail

    def _sync(self) -> None:
        inner = self._inner
        self.usage, self.finish_reason = inner.usage, inner.finish_reason
        self.text_chars = inner.text_chars

    def error_event(self, error: UpstreamError) -> bytes:
        return self._error_event(error)

    async def aclose(self) -> None:
        await self._inner.aclose()
