"""The upstream client against hostile or unusual answers (issue 16, finding 9): interim
1xx responses before the final one, a head without end, a body bigger than the cap.

The servers are raw sockets writing exact bytes, and count what they managed to send, so
a test can prove the client stopped reading early rather than buffering it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.providers.h1 import Endpoint, Pool, ResponseTooLarge
from proxy.providers.http import transport_error

Send = Callable[[bytes], Awaitable[None]]
Script = Callable[[asyncio.StreamReader, Send], Awaitable[None]]
MiB = 1024 * 1024


class RawServer:
    """Plays `script` on each connection; `sent` counts bytes the socket accepted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sent = 0
        self.gone = asyncio.Event()  # the client hung up on a script still sending
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def endpoint(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.port}/v1/chat/completions", {})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # little in flight

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
            self.sent += len(data)

        try:
            await self.script(reader, send)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(script: Script) -> RawServer:
        server = RawServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(limit=4, timeout=30.0, connect_timeout=2.0, max_body_bytes=1 * MiB)
    yield pool
    await pool.close()


JSON = b'{"ok":true}'
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(JSON), JSON)


@pytest.mark.parametrize("one_write", [True, False], ids=["one_write", "apart"])
async def test_100_and_103_before_the_final_response_are_skipped(
    serve: Any, pool: Pool, one_write: bool
) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"

    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        for _ in range(2):  # and the connection is fit for the next request
            await read_request(reader)
            if one_write:
                await send(interim + FINAL)
            else:
                await send(interim)  # two writes: most likely two reads for the client
                await send(FINAL)
        await reader.read()

    server = await serve(script)
    for _ in range(2):
        resp = await pool.post(server.endpoint(), b"{}")
        assert resp.status == 200
        assert "link" not in resp.headers  # the 103's headers are not the answer's
        assert await resp.read() == JSON
        resp.release()


async def test_head_without_end_is_dropped_at_the_cap_not_read_whole(
    serve: Any, pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        await read_request(reader)
        await send(b"HTTP/1.1 200 OK\r\nX-Big: ")
        piece = b"a" * (64 * 1024)
        for _ in range(1024):  # 64 MiB of one header value
            await send(piece)

    server = await serve(script)
    with pytest.raises(ResponseTooLarge) as info:
        await pool.post(server.endpoint(), b"{}")
    await server.gone.wait()
    # What the kernel's buffers held beyond the client's 64 KiB, not 64 MiB.
    assert server.sent < 4 * MiB
    mapped = transport_error("up", info.value)
    assert mapped.status == 502 and mapped.reason == "too_large"


async def test_many_headers_past_64k_in_one_read_are_refused(serve: Any, pool: Pool) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 100) for i in range(800))

    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        await read_request(reader)
        await send(head + b"Content-Length: 2\r\n\r\n{}")
        await reader.read()

    server = await serve(script)
    with pytest.raises(ResponseTooLarge):
        await pool.post(server.endpoint(), b"{}")


async def test_body_announced_over_the_cap_is_refused_before_it_is_read(
    serve: Any, pool: Pool
) -> None:
    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        await read_request(reader)
        await send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (200 * MiB))
        piece = b"x" * (64 * 1024)
        for _ in range(200 * 16):
            await send(piece)

    server = await serve(script)
    resp = await pool.post(server.endpoint(), b"{}")
    with pytest.raises(ResponseTooLarge):
        await resp.read()
    await server.gone.wait()
    assert server.sent < 4 * MiB


async def test_chunked_body_growing_past_the_cap_is_refused_early(serve: Any, pool: Pool) -> None:
    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        await read_request(reader)
        await send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * (64 * 1024)
        for _ in range(200 * 16):  # 200 MiB, never ending in time
            await send(b"%x\r\n%b\r\n" % (len(piece), piece))

    server = await serve(script)
    resp = await pool.post(server.endpoint(), b"{}")
    with pytest.raises(ResponseTooLarge):
        await resp.read()
    await server.gone.wait()
    assert server.sent < 4 * MiB


async def test_body_under_the_cap_is_read_whole(serve: Any, pool: Pool) -> None:
    body = b"y" * (MiB - 10)

    async def script(reader: asyncio.StreamReader, send: Send) -> None:
        await read_request(reader)
        await send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await serve(script)
    resp = await pool.post(server.endpoint(), b"{}")
    assert await resp.read() == body
    resp.release()
