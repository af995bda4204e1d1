"""A lean HTTP/1.1 client for stream_scale.py: one keep-alive connection, one request at a time.

Why hand-made: stream_scale.py's client shares the load core with the fake upstream, and at
1,000 paced streams (20,000 chunks a second) aiohttp's per-read machinery (its stream reader,
`iter_any`, a coroutine wake-up for every chunk) took over half of that core, enough to set the
direct run's own timing. Here a read costs one `data_received`: a `time.monotonic_ns()` stamp,
httptools decodes the status line, headers and chunked framing in C, and the read's body goes
straight to the caller's callback with that stamp. No task wakes up until the response is over.

    client = Client(url, body, headers, timeout_s)
    status = await client.post(on_read)   # on_read(body_of_one_read, monotonic_ns) per read
    client.close()

`post` raises `ClientError` (its `kind` names the failure for the report) for a refused or
lost connection, a malformed response or a timeout. A non-200 answer's body is read and dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

OnRead = Callable[[bytes, int], None]


class ClientError(Exception):
    """A request that failed below HTTP; `kind` is how the report counts it."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the whole POST request) for `url`, built once and sent as is."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + ("?" + parts.query if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}",
             f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return host, port, head + body


class Connection(asyncio.Protocol):
    """One TCP connection; `request` sends a request and resolves with its status when the
    response has ended. httptools calls `on_headers_complete`, `on_body` and
    `on_message_complete` from inside `feed_data`."""

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.on_read: OnRead | None = None
        self.status = 0
        self.body = b""
        self.complete = False
        self.keep_alive = True

    # --- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP_NODELAY: asyncio and uvloop set it on every TCP connection themselves.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed mid-response" if self.status
                    else "connection closed before the response")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.waiter is None:  # nothing asked for: the connection is out of step
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(type(e).__name__)
            return
        if self.body:
            body, self.body = self.body, b""
            if self.status == 200 and self.on_read is not None:
                self.on_read(body, now)
        if self.complete:
            self._finish()

    # --- httptools ---------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        # One read may hold several chunks: the caller sees the read whole, as with a stream
        # reader's `iter_any`.
        self.body = body if not self.body else self.body + body

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # --- requests ----------------------------------------------------------------------------

    def request(self, data: bytes, on_read: OnRead) -> asyncio.Future[int]:
        assert self.transport is not None and self.waiter is None
        self.status, self.body, self.complete = 0, b"", False
        self.on_read = on_read
        self.waiter = waiter = self.loop.create_future()
        self.timer = self.loop.call_later(self.timeout_s, self._fail, "TimeoutError")
        self.transport.write(data)
        return waiter

    def _finish(self) -> None:
        waiter = self._end_request()
        if not self.keep_alive:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(self.status)

    def _fail(self, kind: str) -> None:
        waiter = self._end_request()
        self.close()  # the parser's state is unknown now: never reuse the connection
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientError(kind))

    def _end_request(self) -> asyncio.Future[int] | None:
        waiter, timer = self.waiter, self.timer
        self.waiter = self.timer = self.on_read = None
        if timer is not None:
            timer.cancel()
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """One slot's keep-alive connection to one URL, reopened whenever the server closed it."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
        self.host, self.port, self.request = request_bytes(url, body, headers)
        self.timeout_s = timeout_s
        self.conn: Connection | None = None

    async def post(self, on_read: OnRead) -> int:
        """Send the request; `on_read(body, monotonic_ns)` gets every read of a 200 answer's
        body (chunk framing removed) as it arrives. Returns the status once the answer ends."""
        conn = self.conn
        if conn is None or conn.closed:
            conn = self.conn = await self._connect()
        return await conn.request(self.request, on_read)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self.timeout_s), self.host, self.port),
                self.timeout_s)
        except (OSError, TimeoutError) as e:
            raise ClientError(type(e).__name__) from e
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
