"""One keep-alive HTTP/1.1 connection: an `asyncio.Protocol` feeding httptools.

It carries one request at a time. The response body is queued as `data_received` brings it,
one piece a socket read (the chunks of chunked encoding that one read holds are joined, so
a burst of events is parsed and relayed once, not once a chunk), and reading pauses
while more than `_HIGH_WATER` bytes wait unread, so a slow reader slows the upstream
instead of filling memory. A reader that can take each piece where it lands (a relay
writing to its client) is handed it from `data_received` itself instead (`push_body`): no
task switch per piece. The call's deadline is armed on the pool's `Deadlines` (`deadline.py`):
no loop timer per request; it fires up to `deadline.RESOLUTION_S` late.

Interim responses (100 Continue, 103 Early Hints) are skipped: the caller sees the final
one. What the upstream may make the gateway hold is capped: a response's head (interim
ones included) at `MAX_HEAD_BYTES`, a body read whole at the caller's limit; past either
the connection is dropped with `ResponseTooLarge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import zlib
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from ...deadline import Deadlines
from .endpoint import Key
from .errors import BadResponse, ConnectionLost, ResponseTooLarge

_HIGH_WATER: Final = 64 * 1024  # unread body bytes that pause reading from the socket
_LOW_WATER: Final = 16 * 1024  # ... and resume it
# Header names the connection itself looks at have these lengths; others skip the compare.
_WATCHED_LENGTHS: Final = frozenset((14, 16, 17))
_FRAMING: Final = (b"content-length", b"transfer-encoding")
# Real answers' heads are a few hundred bytes; aiohttp's client refuses a line over 8 KiB.
MAX_HEAD_BYTES: Final = 64 * 1024


class Inflater(Protocol):
    """What the connection uses of `zlib.decompressobj()` (whose class zlib does not name)."""

    def decompress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _inflater(coding: bytes) -> Inflater | None:
    """A decompressor for a gzip or zlib-deflate body; None for identity (or unknown: as is)."""
    if coding.strip().lower() in (b"gzip", b"x-gzip", b"deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # 32: detect a gzip or zlib header
    return None


class Connection(asyncio.Protocol):
    transport: asyncio.Transport

    __slots__ = (
        "_busy",
        "_chunks",
        "_closed",
        "_deadlines",
        "_exc",
        "_framed",
        "_got_data",
        "_head_bytes",
        "_head_done",
        "_head_read",
        "_inflate",
        "_interim",
        "_keep_alive",
        "_length",
        "_loop",
        "_on_close",
        "_parser",
        "_parts",
        "_paused",
        "_queued",
        "_receiver",
        "_then",
        "_waiter",
        "complete",
        "idle_since",
        "key",
        "raw_headers",
        "reused",
        "status",
        "transport",
        "when",
    )

    def __init__(self, key: Key, on_close: Callable[[Connection], None],
                 deadlines: Deadlines) -> None:
        self.key = key
        self.reused = False  # served a response before: a failure may be a stale keep-alive
        self.idle_since = 0.0  # loop time it went idle in the pool; 0 while in use
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.complete = False  # the whole response has been received
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._parts: list[bytes] = []  # body pieces of the read being parsed
        self._queued = 0
        self._paused = False
        self._busy = False
        self._closed = False
        self._head_done = False
        self._head_bytes = 0  # header bytes of this response's heads, interim ones included
        self._head_read = 0  # bytes received while its final head was not complete
        self._interim = False  # parsing a 1xx response, which the caller never sees
        self._length = -1  # the final response's Content-Length, -1 when it has none
        self._framed = False  # Content-Length or Transfer-Encoding: else the body ends at EOF
        self._keep_alive = False
        self._got_data = False
        self._inflate: Inflater | None = None
        self._exc: BaseException | None = None
        self._deadlines = deadlines  # the exchange's deadline is armed there (`expire`)
        self.when = 0.0  # the exchange's deadline, loop time
        self._waiter: asyncio.Future[None] | None = None
        self._then: Callable[[Connection], None] | None = None
        self._receiver: Callable[[bytes], bool] | None = None

    # -- what the pool and the response use ------------------------------------------------

    @property
    def reusable(self) -> bool:
        return self.complete and self._keep_alive and not self._closed and self._exc is None

    @property
    def can_finish(self) -> bool:
        """Mid-body but healthy and framed: the rest can be read off in the background."""
        return (self._busy and self._head_done and self._framed and not self.complete
                and not self._closed and self._exc is None)

    def finish_then(self, then: Callable[[Connection], None]) -> None:
        """The caller has what it needs (an event stream's last event) but the body's end
        has not arrived: drop what still comes and call `then` when the response is whole.
        The exchange's deadline still runs: a body that never ends closes the connection.
        """
        self._then = then
        self._discard_body()

    @property
    def stale(self) -> bool:
        """Lost before answering on a reused connection: the server dropped it while idle."""
        return self.reused and not self._got_data

    async def send(self, request: bytes, deadline: float) -> None:
        """Write one request and wait for the response's status and headers.

        Any failure, cancellation included, closes the connection.
        """
        self.status, self.raw_headers, self.complete = 0, [], False
        self._busy, self._head_done, self._framed, self._got_data = True, False, False, False
        self._inflate, self._length, self._interim = None, -1, False
        self._head_bytes = self._head_read = 0
        self.when = deadline
        self._deadlines.arm(self)
        self.transport.write(request)
        try:
            while not self._head_done:
                if self._exc is not None:
                    raise self._exc
                await self._new_waiter()
        except BaseException:
            self.abort()
            raise

    async def next_chunk(self) -> bytes | None:
        """The next piece of body as one socket read brought it; None at the end."""
        chunks = self._chunks
        while not chunks:
            if self._exc is not None:
                raise self._exc
            if self.complete:
                return None
            await self._new_waiter()
        chunk = chunks.popleft()
        self._queued -= len(chunk)
        if self._paused and self._queued < _LOW_WATER:
            self._resume()
        return chunk

    async def push_body(self, receiver: Callable[[bytes], bool]) -> None:
        """Hand each body piece to `receiver` as it arrives, from the protocol callback.

        Pieces already queued go first, in order. Returns when the body has ended or failed
        (`next_chunk` then says which), or once `receiver` returns False: it took that
        piece but wants no more pushed, and later pieces queue for `next_chunk` again.
        `receiver` must not raise: it runs inside the HTTP parser.
        """
        chunks = self._chunks
        while chunks:
            chunk = chunks.popleft()
            self._queued -= len(chunk)
            if not receiver(chunk):
                break
        else:
            self._receiver = receiver
        if self._paused and self._queued < _LOW_WATER:
            self._resume()
        try:
            while self._receiver is not None and not self.complete and self._exc is None:
                await self._new_waiter()
        finally:
            self._receiver = None

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body, whole; `ResponseTooLarge` (connection dropped) past `limit`
        bytes, as decoded, or at once when the Content-Length says it will be."""
        parts: list[bytes] = []
        size = 0
        if self._length > limit and self._inflate is None:
            self._too_large(f"the response body's Content-Length {self._length} is over {limit}")
        while True:
            size += self._queued
            parts += self._chunks
            self._discard_body()  # the reader takes everything: never leave reading paused
            if size > limit:
                self._too_large(f"the response body is over {limit} bytes")
            if self.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._exc is not None:
                raise self._exc
            await self._new_waiter()

    def _too_large(self, message: str) -> None:
        error = ResponseTooLarge(message)
        self._fail(error)
        self.abort()
        raise error

    def recycle(self) -> None:
        """Back to idle: unread body dropped, reading on (to notice the server closing)."""
        self._busy = False
        self._discard_body()

    def close(self) -> None:
        """Close after a complete response, or drop at once mid-response."""
        if self.complete and self._exc is None and not self._closed:
            self._shut(self.transport.close)
        else:
            self.abort()

    def abort(self) -> None:
        if not self._closed:
            self._shut(self.transport.abort)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # answers are small: don't let Nagle hold them
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.complete:
            self.abort()  # bytes nobody asked for: the connection's framing is lost
            return
        self._got_data = True
        if not self._head_done:
            self._head_read += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            # A zlib error from on_body arrives here too, as the parser's callback error,
            # and so does the head cap from `on_headers_complete` (its error is set first).
            self._deliver()  # what parsed before the error, as it would have gone
            self._fail(BadResponse(f"invalid HTTP response from the upstream: {e!r}"))
            self.abort()
            return
        self._deliver()
        # httptools keeps a header it has not seen the end of: count what came in, so
        # that a head without end is dropped at the cap, not read to its end.
        if not self._head_done and self._head_read > MAX_HEAD_BYTES:
            self._fail(ResponseTooLarge(f"the response head is over {MAX_HEAD_BYTES} bytes"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        by_peer = not self._closed
        if self._busy and not self.complete:
            if by_peer and exc is None and self._head_done and not self._framed:
                self._finish(keep_alive=False)  # a body without length ends with the connection
            else:
                lost = ConnectionLost("the upstream closed the connection mid-response")
                lost.__cause__ = exc
                self._fail(lost)
        if by_peer:
            self._shut(None)
        self._wake()

    def pause_writing(self) -> None:
        """Requests are written whole; the transport buffers what the socket can't take."""

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        if len(name) in _WATCHED_LENGTHS:
            lower = name.lower()
            if lower == b"content-encoding":
                self._inflate = _inflater(value)
            elif lower in _FRAMING:
                self._framed = True
                if lower == b"content-length" and value.strip().isdigit():
                    self._length = int(value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        interim = 100 <= status < 200  # 101 Switching Protocols raises as an upgrade
        # Heads are measured only when they could be over the cap: the reads that brought
        # them are (a read may also hold body); interim heads always, being rare.
        if interim or self._head_read > MAX_HEAD_BYTES:
            self._head_bytes += sum(len(n) + len(v) + 4 for n, v in self.raw_headers)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ResponseTooLarge(f"the response head is over {MAX_HEAD_BYTES} bytes"))
                raise ResponseTooLarge  # stops the parser; data_received closes the connection
        if interim:
            self._interim = True
            self.raw_headers = []
            self._inflate, self._framed, self._length = None, False, -1
            return
        self.status = status
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._then is not None:
            return  # finishing in the background: nobody reads the rest
        if self._inflate is not None:
            body = self._inflate.decompress(body)  # zlib.error: see data_received
        if body:
            self._parts.append(body)  # handed on once the whole read is parsed: `_deliver`

    def on_message_complete(self) -> None:
        if self._interim:  # the final response follows on the same connection
            self._interim = False
            return
        self._finish(self._parser.should_keep_alive())

    # -- internals -------------------------------------------------------------------------

    def _deliver(self) -> None:
        """The body pieces of one read, joined, to the receiver or the queue."""
        parts = self._parts
        if not parts:
            return
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        receiver = self._receiver
        if receiver is None:
            self._queue(body)
        elif not receiver(body):
            self._receiver = None
            self._wake()

    def _queue(self, body: bytes) -> None:
        self._chunks.append(body)
        self._queued += len(body)
        if self._queued > _HIGH_WATER and not self._paused and not self._closed:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._deliver()  # the body's last pieces go before its end
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail:
                self._queue(tail)
        self.complete = True
        self._keep_alive = keep_alive
        self._deadlines.disarm(self)
        self._wake()
        then, self._then = self._then, None
        if then is not None:
            then(self)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self._wake()

    def expire(self) -> None:
        """The exchange's deadline passed (`Deadlines` calls this)."""
        self._fail(TimeoutError())
        self.abort()

    def _shut(self, how: Callable[[], None] | None) -> None:
        """Close once (`how`: the transport's close or abort; None when already closed)."""
        self._closed = True
        self._then = None
        self._deadlines.disarm(self)
        if how is not None:
            how()
        self._on_close(self)

    def _discard_body(self) -> None:
        self._chunks.clear()
        self._queued = 0
        if self._paused:
            self._resume()

    def _resume(self) -> None:
        self._paused = False
        if not self._closed:
            self.transport.resume_reading()

    def _new_waiter(self) -> asyncio.Future[None]:
        self._waiter = waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
