"""The HTTP edge on real sockets: deadlines for slow clients, the connection cap, and what
malformed requests and internal failures leave in the log and the response.

The gateway runs behind `proxy.edge.EdgeServer`, the listener `python -m proxy serve` uses,
with short timeouts so each case ends within a second or two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from polling import wait_for
from aiohttp import web
from harness import ADMIN_KEY, gateway_settings

from proxy.app import build_app
from proxy.edge import EdgeServer, connection_cap
from proxy.migrate import migrate

SECRET_KEY = "sk-px-ThisIsTheClientsSecretKeyDoNotLogIt0123456789abcdefgh"
BOUND_S = 5.0  # how long any single wait may take before the test fails


class Edge:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.port = server.port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@asynccontextmanager
async def edge_gateway(
    tmp_path: Path, edge_toml: str, boom: bool = False
) -> AsyncIterator[Edge]:
    settings = gateway_settings(tmp_path, "[edge]\n" + edge_toml)
    await migrate(settings.database_url)
    app = build_app(settings)
    if boom:
        app.router.add_get("/test/boom", _boom)
    server = EdgeServer(app, settings, reuse_port=False)
    await server.start(host="127.0.0.1", port=0)
    try:
        yield Edge(server)
    finally:
        await server.close()


async def _boom(request: web.Request) -> web.Response:
    raise KeyError("a bug in the gateway")


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    return await asyncio.wait_for(reader.read(), BOUND_S)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(
        reader.readexactly(int(headers.get("content-length", "0"))), BOUND_S
    )
    return status, headers, body


def status_of(raw: bytes) -> int:
    return int(raw.split(b"\r\n", 1)[0].split()[1])


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


async def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    async with edge_gateway(tmp_path, "header_timeout_s = 0.5\nkeepalive_timeout_s = 30") as gw:
        reader, writer = await gw.connect()
        started = time.monotonic()
        data = await read_until_closed(reader)
        took = time.monotonic() - started
        writer.close()
    assert data == b""  # nothing was asked: closed without an answer
    assert 0.4 <= took < 2.0


async def test_slowloris_header_drip_gets_408_and_is_closed(tmp_path: Path) -> None:
    async with edge_gateway(tmp_path, "header_timeout_s = 0.5\nkeepalive_timeout_s = 30") as gw:
        reader, writer = await gw.connect()

        async def drip() -> None:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
            for _ in range(100):  # one byte each 50 ms: the headers never end in time
                writer.write(b"X")
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        started = time.monotonic()
        try:
            data = await read_until_closed(reader)
        finally:
            dripping.cancel()
        took = time.monotonic() - started
        writer.close()
    assert status_of(data) == 408
    body = msgspec.json.decode(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert 0.4 <= took < 2.0


async def test_keep_alive_request_after_the_header_timeout_of_the_first_is_served(
    tmp_path: Path,
) -> None:
    # The header deadline runs from the first byte of each request, not from the connect.
    async with edge_gateway(tmp_path, "header_timeout_s = 0.5\nkeepalive_timeout_s = 30") as gw:
        reader, writer = await gw.connect()
        writer.write(HEALTH)
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.8)  # the client's pace: idle past the first request's deadline
        writer.write(HEALTH)
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with edge_gateway(tmp_path, "header_timeout_s = 5\nkeepalive_timeout_s = 0.5") as gw:
        reader, writer = await gw.connect()
        writer.write(HEALTH)
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        started = time.monotonic()
        assert await read_until_closed(reader) == b""
        took = time.monotonic() - started
        writer.close()
    assert 0.4 <= took < 2.5


async def send_slow_body(
    tmp_path: Path, head: bytes, start: bytes
) -> tuple[int, dict[str, str], bytes, float]:
    """A request whose 100-byte body stops after `start`, to a gateway whose body deadline
    is 0.5 s: (status, headers, body, seconds to the answer); the connection must close."""
    async with edge_gateway(tmp_path, "body_timeout_s = 0.5\nkeepalive_timeout_s = 30") as gw:
        reader, writer = await gw.connect()
        writer.write(head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     + start)
        started = time.monotonic()
        status, headers, body = await read_response(reader)
        took = time.monotonic() - started
        assert await read_until_closed(reader) == b""  # and the connection is not kept
        writer.close()
    return status, headers, body, took


async def test_slow_body_gets_408(tmp_path: Path) -> None:
    status, headers, body, took = await send_slow_body(
        tmp_path, b"POST /v1/api-keys HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + ADMIN_KEY.encode() + b"\r\n", b'{"name": "sl')
    assert status == 408
    assert msgspec.json.decode(body)["error"]["code"] == "request_timeout"
    assert "x-request-id" in headers
    assert 0.4 <= took < 2.0


async def test_slow_body_on_the_messages_route_gets_anthropics_408(tmp_path: Path) -> None:
    """Anthropic's SDKs read `{"type": "error", "error": {...}}`: the body deadline's 408 on
    /v1/messages has that shape, as every other refusal there does."""
    status, headers, body, _ = await send_slow_body(
        tmp_path, b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: "
        + ADMIN_KEY.encode() + b"\r\n", b'{"model": "cl')
    assert status == 408
    answer = msgspec.json.decode(body)
    assert answer["type"] == "error" and "did not arrive" in answer["error"]["message"]
    assert "x-request-id" in headers


async def test_connections_past_the_cap_get_503_and_a_freed_slot_is_reused(
    tmp_path: Path,
) -> None:
    async with edge_gateway(tmp_path, "max_connections = 3") as gw:
        held = []
        for _ in range(3):  # each served once, so each is surely open on the server side
            reader, writer = await gw.connect()
            writer.write(HEALTH)
            assert (await read_response(reader))[0] == 200
            held.append((reader, writer))
        assert gw.server.slots.open == 3
        reader, writer = await gw.connect()
        data = await read_until_closed(reader)  # refused without reading a byte
        writer.close()
        assert status_of(data) == 503
        assert b"retry-after: 1" in data.lower()
        assert msgspec.json.decode(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == (
            "too_many_connections")
        assert gw.server.slots.refused == 1

        held.pop()[1].close()
        await wait_for(lambda: gw.server.slots.open <= 2, BOUND_S)  # the server notices the close
        reader, writer = await gw.connect()
        writer.write(HEALTH)
        assert (await read_response(reader))[0] == 200
        writer.close()
        for _, w in held:
            w.close()


def test_default_connection_cap_leaves_descriptors_for_the_rest_of_the_process() -> None:
    assert connection_cap(0, 1024) == (1024 - 256) // 2
    assert connection_cap(0, 65536) == (65536 - 256) // 2
    assert connection_cap(100, 1024) == 100


BARE_LF = (b"POST /v1/chat/completions HTTP/1.1\nHost: gw\nAuthorization: Bearer "
           + SECRET_KEY.encode() + b"\nContent-Length: 2\n\n{}")
# An HTTP/2 client with prior knowledge: the preface, SETTINGS, then a HEADERS frame whose
# literal (not Huffman-coded) field carries the bearer key as plain bytes.
_HPACK = (b"\x00\x0dauthorization" + bytes([7 + len(SECRET_KEY)]) + b"Bearer "
          + SECRET_KEY.encode())
HTTP2_PREFACE = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                 + len(_HPACK).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + _HPACK)


@pytest.mark.parametrize("raw", [BARE_LF, HTTP2_PREFACE], ids=["bare-lf", "http2-preface"])
async def test_malformed_request_is_one_log_line_without_the_key_and_a_400_without_echo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    async with edge_gateway(tmp_path, "") as gw:
        caplog.clear()
        reader, writer = await gw.connect()
        writer.write(raw)
        data = await read_until_closed(reader)
        writer.close()
        records = [r for r in caplog.records
                   if r.name.startswith(("aiohttp", "proxy")) and r.levelno >= logging.INFO]
    assert status_of(data) == 400
    body = data.split(b"\r\n\r\n", 1)[1]
    assert msgspec.json.decode(body)["error"]["code"] == "malformed_request"
    for echoed in (SECRET_KEY.encode(), b"Authorization", b"authorization", b"PRI", b"Host"):
        assert echoed not in data
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.exc_info is None and record.exc_text is None
    text = record.getMessage()
    assert "\n" not in text and SECRET_KEY not in text and "sk-px" not in text


async def test_internal_error_logs_its_traceback_with_the_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="proxy")
    async with edge_gateway(tmp_path, "", boom=True) as gw:
        reader, writer = await gw.connect()
        writer.write(b"GET /test/boom HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, body = await read_response(reader)
        writer.close()
    assert status == 500
    assert b"a bug in the gateway" not in body and b"Traceback" not in body
    rid = headers["x-request-id"]
    failures = [r for r in caplog.records if r.name == "proxy" and rid in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is KeyError
