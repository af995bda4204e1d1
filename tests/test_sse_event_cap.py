"""A provider that streams one endless line (a stream event with no end) cannot make the
gateway buffer it for as long as it writes: past `MAX_EVENT_BYTES` the stream fails with a
clear error, and the upstream connection is dropped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from harness import gateway_settings, running_gateway
from polling import wait_for
from proxy.errors import UpstreamError
from proxy.providers.sse import MAX_EVENT_BYTES, SSEParser

MIB = 1024 * 1024
OFFERED = 64 * MIB
FIRST = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
         b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}\n\n')


class EndlessLine:
    """An OpenAI-shaped upstream whose stream is one good chunk, then one line that never
    ends; it counts what it managed to write before the gateway hung up."""

    def __init__(self) -> None:
        self.sent = 0
        self.gone = False  # the gateway hung up before all was written
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(FIRST)
        piece = b"data: " + b"x" * (MIB - 6)
        try:
            while self.sent < OFFERED:
                await resp.write(piece)
                self.sent += len(piece)
                piece = b"x" * MIB
        except (ConnectionResetError, ConnectionError):
            self.gone = True  # the gateway hung up: what we wanted
        return resp

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"


@pytest.fixture
async def endless() -> AsyncIterator[tuple[EndlessLine, str]]:
    upstream = EndlessLine()
    url = await upstream.start()
    yield upstream, url
    assert upstream.runner is not None
    await upstream.runner.cleanup()


def test_the_parser_refuses_an_event_past_the_cap_in_one_read_or_many() -> None:
    whole = SSEParser()
    with pytest.raises(UpstreamError, match="larger than the gateway accepts"):
        whole.take(b"data: " + b"x" * MAX_EVENT_BYTES)
    parts = SSEParser()
    with pytest.raises(UpstreamError, match="larger than the gateway accepts"):
        for _ in range(MAX_EVENT_BYTES // MIB + 1):
            parts.take(b"x" * MIB)
    # a complete run followed by an endless remainder is refused too
    tail = SSEParser()
    with pytest.raises(UpstreamError):
        tail.take(FIRST + b"data: " + b"x" * MAX_EVENT_BYTES)


def test_events_up_to_the_cap_pass() -> None:
    parser = SSEParser()
    event = b"data: " + b"x" * (MAX_EVENT_BYTES - 16) + b"\n\n"
    assert parser.take(event[:MIB]) == b""
    assert parser.take(event[MIB:]) == event


async def test_an_endless_stream_event_fails_the_stream_and_drops_the_upstream(
    tmp_path: Path, endless: tuple[EndlessLine, str],
) -> None:
    upstream, url = endless
    settings = gateway_settings(tmp_path, f"""
[providers.up]
protocol = "openai"
base_url = "{url}"
regions = ["global"]
timeout_s = 60

[[models]]
id = "up/m"
provider = "up"
upstream = "m"
""")
    ask = {"model": "up/m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        running_gateway(settings) as gw,
        aiohttp.ClientSession() as http,
        http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json=ask) as resp,
    ):
        assert resp.status == 200  # the first chunk was relayed before the endless line
        body = await resp.read()
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    error = json.loads(events[-1])["error"]
    assert "larger than the gateway accepts" in error["message"]
    # The gateway stopped reading at the cap: the upstream could not write all it offered
    # (what the kernel's socket buffers hold on loopback is a few MiB at most).
    assert upstream.sent < MAX_EVENT_BYTES + 16 * MIB < OFFERED
    await wait_for(lambda: upstream.gone)  # it sees the hang-up after the client's read
    assert upstream.gone
