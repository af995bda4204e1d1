"""Anthropic Messages in, Anthropic Messages out: the body and the events pass through.

Only `model` is rewritten (the catalog's upstream name); `anthropic-version` and
`anthropic-beta` are the client's. The answer is read for accounting (usage, stop
reason, text that flowed) and sent on as the provider wrote it, event by event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from msgspec import Raw

from ...dialects.messages import error_event
from ...errors import UpstreamError, malformed_response
from ..base import Completion
from ..h1 import H1Error, Response
from ..http import transport_error
from ..redact import PATTERNS_ONLY, Redactor
from ..sse import SSEParser, parse
from ..wire import WireCompletion, WireStream
from .response import _decode_message, finish_reason, to_usage
from .stream import StreamTranslator

_decode_fields = msgspec.json.Decoder(dict[str, Raw]).decode


def to_wire_completion(body: bytes, provider: str) -> Completion:
    """The provider's message as it is, with what accounting needs read out of it."""
    try:
        payload = _decode_fields(body)
        msg = _decode_message(body)
    except msgspec.MsgspecError:
        raise malformed_response(provider) from None
    chars = 0
    for block in msg.content:
        if block.type == "tool_use":
            chars += len(block.input)
        else:
            chars += len(block.text or block.thinking or "")
    usage = to_usage(msg.usage) if msg.usage is not None else None
    return WireCompletion(payload, usage, finish_reason(msg.stop_reason), chars)


class MessagesWireStream(WireStream):
    """The provider's SSE events, each run forwarded as it was read; the events are also
    read by the chat translator (its chunks dropped) for usage and the stop reason."""

    def __init__(self, provider: str, model: str, resp: Response,
                 redact: Redactor = PATTERNS_ONLY) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._tr = StreamTranslator(model, provider, redact=redact)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        tr = self._tr
        try:
            async for data in self._resp:
                complete = parser.take(data)
                if not complete:
                    continue
                sent = 0
                try:
                    for event, payload in parse(complete):
                        tr.feed(event, payload)
                        sent += 1
                except UpstreamError:
                    if sent:  # the events before the error still reach the client
                        yield _first_events(complete, sent)
                    raise
                finally:
                    self._sync()
                yield complete
                if tr.done:
                    break
        except (TimeoutError, H1Error) as e:
            raise transport_error(self._provider, e) from None
        finally:
            self._resp.release() if tr.done else self._resp.close()
        tr.end()

    def _sync(self) -> None:
        tr = self._tr
        self.usage, self.finish_reason, self.text_chars = tr.usage, tr.finish_reason, tr.text_chars
        self.finished = tr.done

    def error_event(self, error: UpstreamError) -> bytes:
        return error_event(error.status, error.message)

    async def aclose(self) -> None:
        self._resp.close()


def _first_events(complete: bytes, n: int) -> bytes:
    """The first `n` SSE events of a run of complete ones, as they came."""
    blocks = complete.split(b"\n\n")
    return b"\n\n".join(blocks[:n]) + b"\n\n"
