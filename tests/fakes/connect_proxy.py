"""A small HTTP proxy for tests: CONNECT tunnels and plain forwarding, counted.

`CONNECT host:port` opens a tunnel (200, then bytes both ways); any other request names
an absolute URL (`POST http://host:port/path`), and the connection is forwarded as it is
to that host. Each tunnel or forwarded connection is recorded (`tunnels`, `forwarded`:
the target and the `Proxy-Authorization` it came with), so a test proves that traffic
went through the proxy. `require` makes it answer 407 to a request without those
credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class ConnectProxy:
    def __init__(self, require: str | None = None) -> None:
        self.require = require  # the Proxy-Authorization value demanded, if any
        self.tunnels: list[tuple[str, str | None]] = []  # (host:port, proxy authorization)
        self.forwarded: list[tuple[str, str | None]] = []
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the sockets ends every pipe; a cancelled handler would be reported by
        # asyncio's stream callback as an error.
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                     if line.lower().startswith("proxy-authorization:")), None)
        if self.require is not None and auth != self.require:
            self.refused += 1
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self._writers.add(up_writer)
            self.tunnels.append((target, auth))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer)
            return
        url = urlsplit(target)
        assert url.hostname and url.port, f"not an absolute URL: {target}"
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
        self._writers.add(up_writer)
        self.forwarded.append((f"{url.hostname}:{url.port}", auth))
        up_writer.write(head)  # absolute-form, as it came: origin servers must accept it
        await _pipe_both(reader, writer, up_reader, up_writer)


async def _pipe_both(
    a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pipe(a_reader, b_writer), _pipe(b_reader, a_writer))
    finally:
        b_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
