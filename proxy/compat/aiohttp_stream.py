"""The fence for the relay's streams (`api/relay.py`): two ways under aiohttp's response API.

- `EventStreamResponse` sets `StreamResponse._send_headers_immediately` (a private class
  attribute; aiohttp's own `Response` sets it the same way) so that an SSE response's
  headers leave with its first bytes: one socket write, not two, for every stream.
- `RawChunks` writes body chunks straight to the transport, framed as aiohttp's chunked
  `StreamWriter` frames them, from the upstream connection's callback: no task switch per
  read. It relies on the writer keeping no state a chunk written beside it would break
  (the headers went out with the first `write`; `write_eof` adds only the last chunk).

Read in aiohttp 3.12.15 and 3.14.5. The probe checks the attribute is still aiohttp's, and
writes one chunk through aiohttp's own `StreamWriter` and one through `RawChunks` to compare
the bytes. There is no public path to fall back to without a change to the relay (a stream
framed two ways would be corrupt): a change refuses to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, cast

from aiohttp import http_writer, web
from multidict import CIMultiDict

from . import fence


class EventStreamResponse(web.StreamResponse):
    """An SSE response whose headers leave with its first bytes: one socket write, not
    two, for every stream (aiohttp's `Response` does the same for bodies)."""

    _send_headers_immediately = False


class RawChunks:
    """Chunks written to the client's transport beside aiohttp's writer (see the module doc)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    @staticmethod
    def of(request: web.Request, response: web.StreamResponse) -> RawChunks | None:
        """For a chunked response whose headers went out; None for one that is not chunked
        (an HTTP/1.0 client) or whose connection is gone."""
        transport = request.transport
        if transport is None or response.headers.get("Transfer-Encoding") != "chunked":
            return None
        return RawChunks(transport)

    @property
    def closing(self) -> bool:
        return self._transport.is_closing()

    def write(self, chunk: bytes) -> int:
        """Write one chunk; returns the bytes the transport still owes the client."""
        transport = self._transport
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return transport.get_write_buffer_size()


# --- the probe ----------------------------------------------------------------------------


class _Capture:
    """A transport and protocol that keep what a `StreamWriter` writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _finish(step: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that must not wait (a small write needs no drain)."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("StreamWriter waited on a small write")


def probe() -> list[str]:
    missing = []
    if vars(web.StreamResponse).get("_send_headers_immediately") is not True:
        missing.append("StreamResponse._send_headers_immediately")
    capture = _Capture()
    loop = cast(asyncio.AbstractEventLoop, None)  # kept, not used, by a write that does not drain
    writer = http_writer.StreamWriter(cast(Any, capture), loop)
    writer.enable_chunking()
    _finish(writer.write_headers("HTTP/1.1 200 OK", CIMultiDict()))
    _finish(writer.write(b"first"))  # with the headers: the case the class attribute makes
    _finish(writer.write(b"data: {}\n\n"))
    theirs = capture.written[-1:]
    RawChunks(cast(asyncio.Transport, capture)).write(b"data: {}\n\n")
    if theirs != capture.written[-1:]:
        missing.append(f"StreamWriter's chunk framing (it wrote {theirs!r}, "
                       f"RawChunks {capture.written[-1:]!r})")
    return missing


FENCE: Final = fence.Fence(
    name="aiohttp streams", module="proxy/compat/aiohttp_stream.py", distribution="aiohttp",
    checked=((3, 12), (3, 15)), probe=probe,
)
