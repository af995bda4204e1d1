"""The lean upstream HTTP/1.1 client (`proxy.providers.h1`) against real local servers.

Each server is a plain `asyncio.start_server` handler writing exact bytes, so framing,
keep-alive and failures are under the test's control. Every test runs on asyncio's own
loop and on uvloop (the gateway's), whose transports differ.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.errors import UpstreamTimeout
from proxy.providers.h1 import BadResponse, ConnectError, ConnectionLost, Endpoint, Pool
from proxy.providers.http import transport_error

Handler = Callable[["Conn"], Awaitable[None]]
JSON = b'{"ok":true}'


def keeping(got: list[bytes]) -> Callable[[bytes], bool]:
    """A push sink that keeps every piece and always asks for more."""
    def sink(piece: bytes) -> bool:
        got.append(piece)
        return True
    return sink


class Conn:
    """One accepted connection, as the test's handler sees it."""

    def __init__(self, server: Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.number = server.connections  # 1 for the first connection the server accepted
        self.reader = reader
        self.writer = writer
        self._log = server.requests

    async def request(self) -> bool:
        """Read the next request into the server's log; False once the client hung up."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        self._log.append((self.number, head, await self.reader.readexactly(length)))
        return True

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, body: bytes = JSON, extra: bytes = b"") -> None:
        await self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
                        + b"Content-Length: %d\r\n\r\n%b" % (len(body), body))


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes]] = []  # connection number, head, body
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(Conn(self, reader, writer))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    def endpoint(self, path: str = "/v1/chat/completions") -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.port}{path}",
                        {"Content-Type": "application/json", "Authorization": "Bearer k"})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(limit=10, timeout=60.0, connect_timeout=2.0)
    yield pool
    await pool.close()


def answer_once(data: bytes) -> Handler:
    """Send `data` for the first request, then hold the connection until the client leaves."""
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(data)
        await conn.request()
    return handle


async def keep_alive(conn: Conn) -> None:
    """Answer every request on the connection, for as long as the client keeps it."""
    while await conn.request():
        await conn.answer()


async def post_read(pool: Pool, server: Server, body: bytes = b"{}") -> bytes:
    resp = await pool.post(server.endpoint(), body)
    try:
        return await resp.read()
    finally:
        resp.release()


# -- requests and keep-alive ---------------------------------------------------------------


async def test_request_is_one_post_with_the_fixed_headers_and_no_user_agent(
    serve: Any, pool: Pool
) -> None:
    server = await serve(keep_alive)
    assert await post_read(pool, server, b'{"a":1}') == JSON
    _, head, body = server.requests[0]
    assert head == (b"POST /v1/chat/completions HTTP/1.1\r\n"
                    b"Host: 127.0.0.1:%d\r\n"
                    b"Content-Type: application/json\r\nAuthorization: Bearer k\r\n"
                    b"Content-Length: 7\r\n\r\n" % server.port)
    assert body == b'{"a":1}'


async def test_keep_alive_serves_sequential_requests_on_one_connection(
    serve: Any, pool: Pool
) -> None:
    server = await serve(keep_alive)
    for _ in range(3):
        assert await post_read(pool, server) == JSON
    assert server.connections == 1
    assert [number for number, _, _ in server.requests] == [1, 1, 1]


@pytest.mark.parametrize("extra", [b"Connection: close\r\n", b""], ids=["close", "http10"])
async def test_answer_without_keep_alive_is_not_reused(
    serve: Any, pool: Pool, extra: bytes
) -> None:
    async def handle(conn: Conn) -> None:  # the server keeps its side open either way
        while await conn.request():
            if extra:
                await conn.answer(extra=extra)
            else:
                await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n" + JSON)

    server = await serve(handle)
    assert await post_read(pool, server) == JSON
    assert await post_read(pool, server) == JSON
    assert server.connections == 2


# -- bodies --------------------------------------------------------------------------------


async def test_chunked_body_is_read_whole(serve: Any, pool: Pool) -> None:
    server = await serve(answer_once(  # the connection stays open: the 0-chunk ends the body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    assert await post_read(pool, server) == b"hello world"


async def test_body_delimited_by_connection_close(serve: Any, pool: Pool) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")

    server = await serve(handle)
    assert await post_read(pool, server) == b"until the end"
    assert await post_read(pool, server) == b"until the end"
    assert server.connections == 2


def chunked_pieces(pieces: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces]


def piece_per_turn(pieces: list[bytes], turn: asyncio.Event) -> Handler:
    """A chunked answer sent one piece each time `turn` is set (and the end on one more),
    then plain answers for as long as the client keeps the connection."""
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in chunked_pieces(pieces):
            await turn.wait()
            turn.clear()
            await conn.send(piece)
        await turn.wait()
        await conn.send(b"0\r\n\r\n")
        while await conn.request():
            await conn.answer(b"next")
    return handle


async def test_body_pieces_are_yielded_as_they_arrive(serve: Any, pool: Pool) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    turn = asyncio.Event()  # the server sends a piece only after the test read the last
    server = await serve(piece_per_turn(pieces, turn))
    resp = await pool.post(server.endpoint(), b"{}")
    got = []
    async with asyncio.timeout(5):
        for _ in pieces:
            turn.set()
            got.append(await anext(resp))
        turn.set()
        assert [chunk async for chunk in resp] == []
    resp.release()
    assert got == pieces


async def test_pushed_pieces_reach_the_receiver_as_they_arrive(serve: Any, pool: Pool) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    turn = asyncio.Event()  # the server sends a piece only after the receiver took the last
    server = await serve(piece_per_turn(pieces, turn))
    resp = await pool.post(server.endpoint(), b"{}")
    got: list[bytes] = []

    def receiver(piece: bytes) -> bool:
        got.append(piece)
        turn.set()
        return True

    turn.set()
    async with asyncio.timeout(5):
        await resp.push(receiver)  # returns at the body's end
        assert [chunk async for chunk in resp] == []
    assert got == pieces
    resp.release()
    assert await post_read(pool, server) == b"next"  # whole, so the connection was reused
    assert server.connections == 1


@pytest.mark.parametrize("pushed", [True, False], ids=["push", "iterate"])
async def test_the_chunks_one_read_brings_are_handed_on_as_one_piece(
    serve: Any, pool: Pool, pushed: bool
) -> None:
    # A burst of events, each in its own chunk of chunked encoding, in one write (one read
    # on loopback): the relay should parse and write it once, not once a chunk.
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    head_read = asyncio.Event()

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await head_read.wait()
        await conn.send(b"".join(chunked_pieces(pieces)) + b"0\r\n\r\n")
        while await conn.request():
            await conn.answer(b"next")

    server = await serve(handle)
    resp = await pool.post(server.endpoint(), b"{}")
    head_read.set()
    got: list[bytes] = []
    async with asyncio.timeout(5):
        if pushed:
            await resp.push(keeping(got))
        got += [chunk async for chunk in resp]
    assert got == [b"".join(pieces)]
    resp.release()
    assert await post_read(pool, server) == b"next"  # read to its end: the connection is reused
    assert server.connections == 1


async def test_receiver_that_says_stop_leaves_the_rest_to_iteration_in_order(
    serve: Any, pool: Pool
) -> None:
    pieces = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10, b"e" * 10]
    sent = asyncio.Event()
    more = asyncio.Event()

    async def handle(conn: Conn) -> None:
        await conn.request()
        wire = chunked_pieces(pieces)
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire[0])
        sent.set()
        await more.wait()
        for piece in wire[1:]:
            await conn.send(piece)
        await conn.send(b"0\r\n\r\n")
        await conn.request()

    server = await serve(handle)
    resp = await pool.post(server.endpoint(), b"{}")
    await sent.wait()
    pushed: list[bytes] = []

    def receiver(piece: bytes) -> bool:
        pushed.append(piece)
        more.set()
        return len(pushed) < 2

    async with asyncio.timeout(5):
        await resp.push(receiver)
        rest = [chunk async for chunk in resp]
    assert len(pushed) == 2
    assert b"".join(pushed + rest) == b"".join(pieces)
    resp.release()


async def test_push_returns_when_the_body_is_cut_and_iteration_raises(
    serve: Any, pool: Pool
) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some")

    server = await serve(handle)
    resp = await pool.post(server.endpoint(), b"{}")
    got: list[bytes] = []
    async with asyncio.timeout(5):
        await resp.push(keeping(got))
    assert b"".join(got) == b"only some"
    with pytest.raises(ConnectionLost):
        await anext(resp)


async def test_large_body_read_while_reading_is_paused_and_resumed(
    serve: Any, pool: Pool
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: past the 64 KiB that pauses reading

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            await conn.send(body[i:i + 65536])
        await conn.request()

    server = await serve(handle)
    resp = await pool.post(server.endpoint(), b"{}")
    got = bytearray()
    async for chunk in resp:
        got += chunk
    resp.release()
    assert got == body


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_gzip_body_is_decoded(serve: Any, pool: Pool, chunked: bool) -> None:
    text = b'{"choices":[]}' * 100
    packed = gzip.compress(text)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
    if chunked:
        half = len(packed) // 2
        answer = (head + b"Transfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n%b\r\n" % (half, packed[:half])
                  + b"%x\r\n%b\r\n0\r\n\r\n" % (len(packed) - half, packed[half:]))
    else:
        answer = head + b"Content-Length: %d\r\n\r\n%b" % (len(packed), packed)
    server = await serve(answer_once(answer))
    assert await post_read(pool, server) == text


async def test_headers_are_looked_up_by_lower_case_name(serve: Any, pool: Pool) -> None:
    server = await serve(answer_once(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"))
    resp = await pool.post(server.endpoint(), b"{}")
    assert resp.status == 429 and resp.headers.get("retry-after") == "7"
    assert await resp.read() == b""
    resp.release()


# -- failures ------------------------------------------------------------------------------


async def test_idle_connection_closed_by_the_server_is_retried_on_a_new_one(
    serve: Any, pool: Pool
) -> None:
    async def handle(conn: Conn) -> None:
        if conn.number == 1:  # answer once, then drop the next request unanswered
            await conn.request()
            await conn.answer()
            await conn.request()
            return
        await keep_alive(conn)

    server = await serve(handle)
    assert await post_read(pool, server) == JSON
    assert await post_read(pool, server) == JSON
    assert [number for number, _, _ in server.requests] == [1, 1, 2]


async def test_new_connection_closed_before_answering_is_not_retried(
    serve: Any, pool: Pool
) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()

    server = await serve(handle)
    with pytest.raises(ConnectionLost) as info:
        await pool.post(server.endpoint(), b"{}")
    assert len(server.requests) == 1
    mapped = transport_error("up", info.value)
    assert mapped.reason == "reset" and "(ConnectionLost)" in mapped.message


async def test_body_cut_short_raises_connection_lost(serve: Any, pool: Pool) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some")

    server = await serve(handle)
    resp = await pool.post(server.endpoint(), b"{}")
    with pytest.raises(ConnectionLost):
        await resp.read()


async def test_second_caller_waits_for_the_only_connection(serve: Any) -> None:
    rest = asyncio.Event()

    async def handle(conn: Conn) -> None:
        while await conn.request():
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + JSON[:5])
            await rest.wait()
            rest.clear()
            await conn.send(JSON[5:])

    server = await serve(handle)
    pool = Pool(limit=1, timeout=60.0, connect_timeout=2.0)
    try:
        first = await pool.post(server.endpoint(), b"{}")
        second = asyncio.create_task(post_read(pool, server))
        rest.set()
        assert await first.read() == JSON  # the second caller ran meanwhile, and waited
        assert not second.done() and len(server.requests) == 1
        first.release()
        rest.set()
        assert await second == JSON
        assert server.connections == 1
    finally:
        await pool.close()


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
LAST_EVENT = b"data: [DONE]\n\n"


async def test_stream_released_before_its_end_is_reused_once_the_end_arrives(
    serve: Any,
) -> None:
    end = asyncio.Event()

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(STREAM_HEAD + b"%x\r\n%b\r\n" % (len(LAST_EVENT), LAST_EVENT))
        await end.wait()
        await conn.send(b"0\r\n\r\n")
        await keep_alive(conn)

    server = await serve(handle)
    pool = Pool(limit=1, timeout=60.0, connect_timeout=2.0)
    try:
        async with asyncio.timeout(5):
            resp = await pool.post(server.endpoint(), b"{}")
            assert await anext(resp) == LAST_EVENT
            resp.release()  # the caller is done; the body's end has not come yet
            second = asyncio.create_task(post_read(pool, server))  # waits for the one slot
            end.set()
            assert await second == JSON
        assert server.connections == 1
        assert [number for number, _, _ in server.requests] == [1, 1]
    finally:
        await pool.close()


async def test_stream_released_whose_end_never_comes_is_closed_at_its_deadline(
    serve: Any,
) -> None:
    hung_up = asyncio.Event()

    async def handle(conn: Conn) -> None:
        if conn.number == 1:
            await conn.request()
            await conn.send(STREAM_HEAD + b"%x\r\n%b\r\n" % (len(LAST_EVENT), LAST_EVENT))
            if not await conn.request():  # no end, ever: the client hangs up
                hung_up.set()
            return
        await keep_alive(conn)

    server = await serve(handle)
    pool = Pool(limit=1, timeout=0.3, connect_timeout=2.0)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):  # a guard: the exchange's own 0.3 s must end it first
            started = loop.time()
            resp = await pool.post(server.endpoint(), b"{}")
            assert await anext(resp) == LAST_EVENT
            resp.release()
            await hung_up.wait()
            assert loop.time() - started >= 0.29  # not before its deadline (uvloop: ms clock)
            assert await post_read(pool, server) == JSON  # and the only slot is free again
        assert server.connections == 2
    finally:
        await pool.close()


async def test_refused_connection_maps_to_could_not_connect_saying_why(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConnectError) as info:
        await pool.post(Endpoint(f"http://127.0.0.1:{port}/v1", {}), b"{}")
    mapped = transport_error("up", info.value)
    assert mapped.reason == "connect"
    # The client is told why, without the address; the operator's log has both.
    assert mapped.message == ("Could not connect to upstream provider `up`: "
                              "the connection was refused.")
    assert [r.getMessage() for r in caplog.records if r.name == "proxy.upstream"] == [
        f"upstream http://127.0.0.1:{port}: connection failed: the connection was refused"]


@pytest.mark.parametrize("head_sent", [False, True], ids=["before_head", "mid_body"])
async def test_total_timeout_raises_timeout_error(serve: Any, head_sent: bool) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        if head_sent:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await conn.request()  # never answers (more): returns when the client hangs up

    server = await serve(handle)
    pool = Pool(limit=10, timeout=0.2, connect_timeout=2.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(5):  # a guard: the pool's own 0.2 s must fire first
                resp = await pool.post(server.endpoint(), b"{}")
                await resp.read()
        assert loop.time() - started < 4
        assert isinstance(transport_error("up", info.value), UpstreamTimeout)
    finally:
        await pool.close()


@pytest.mark.parametrize("head_sent", [False, True], ids=["before_head", "mid_body"])
async def test_cancelled_call_closes_the_connection_and_frees_the_slot(
    serve: Any, head_sent: bool
) -> None:
    hung_up = asyncio.Event()

    async def handle(conn: Conn) -> None:
        if conn.number == 1:
            await conn.request()
            if head_sent:
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            if not await conn.request():
                hung_up.set()
            return
        await keep_alive(conn)

    server = await serve(handle)
    pool = Pool(limit=1, timeout=60.0, connect_timeout=2.0)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # as the relay's first-byte timeout does
                resp = await pool.post(server.endpoint(), b"{}")
                await resp.read()
        async with asyncio.timeout(2):  # well before the call's own 60 s deadline
            await hung_up.wait()
            assert await post_read(pool, server) == JSON  # the only slot is free again
        assert server.connections == 2
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
    ids=["status_line", "header"],
)
async def test_garbled_response_raises_bad_response(
    serve: Any, pool: Pool, answer: bytes
) -> None:
    server = await serve(answer_once(answer))
    with pytest.raises(BadResponse) as info:
        await pool.post(server.endpoint(), b"{}")
    mapped = transport_error("up", info.value)
    assert mapped.reason == "reset"
    assert mapped.message == "The connection to upstream provider `up` failed (BadResponse)."


async def test_corrupt_gzip_body_raises_bad_response(serve: Any, pool: Pool) -> None:
    server = await serve(answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!"))
    resp = await pool.post(server.endpoint(), b"{}")
    with pytest.raises(BadResponse):
        await resp.read()
