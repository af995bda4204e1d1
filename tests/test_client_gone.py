"""A client that goes away cancels the upstream call within a second, streamed or not, and
the request is recorded as 499 (client disconnected).

Before, a non-stream request kept its upstream call (and the provider generating) until
the upstream answered, up to the provider's `timeout_s`; a stream noticed only at its next
write. The fake upstream's handler is cancelled when the gateway closes its connection:
`fake.disconnected` is that event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from polling import poll
from aiohttp import web
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import FakeAnthropic, FakeOpenAI, Gate, Hang, Reply
from harness import ADMIN_KEY, gateway_settings
from ledger_support import wait_for

from proxy.app import build_app
from proxy.migrate import migrate

CANCEL_WITHIN_S = 1.0
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def pg_gateway(
    tmp_path: Path, fresh_pg: str, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    """The gateway run as `serve` runs it: aiohttp's `AppRunner` with its defaults, so
    handlers are not cancelled when a client disconnects (aiohttp's `TestServer`, which
    the other tests use, turns `handler_cancellation` on)."""
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", UPSTREAM_SECRET)
    # The upstream would hold the request for 30 s before the gateway's own timeout.
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url,
                              first_byte_s=30).replace("timeout_s = 10", "timeout_s = 30")
    settings = gateway_settings(tmp_path, toml, PROXY_DATABASE_URL=fresh_pg)
    await migrate(settings.database_url)
    runner = web.AppRunner(build_app(settings), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Gateway(f"http://{host}:{port}")
    finally:
        await runner.cleanup()


class Gateway:
    def __init__(self, url: str) -> None:
        self.url = url


async def send_and_leave(gw: Gateway, path: str, body: dict[str, Any],
                         reached: Any) -> float:
    """Send a request on a raw connection, wait until `reached()` (the upstream has it),
    close the connection; returns when it was closed (monotonic)."""
    host, port = gw.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    payload = msgspec.json.encode(body)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload)
    await writer.drain()
    await wait_for(reached)
    writer.close()
    await writer.wait_closed()
    return time.monotonic()


async def rows_when(dsn: str, done: Callable[[list[asyncpg.Record]], bool],
                    timeout: float = 10.0) -> list[asyncpg.Record]:
    """The ledger's records once `done` holds for them (polled: the ledger writes behind)."""
    conn = await asyncpg.connect(dsn)

    async def rows() -> list[asyncpg.Record]:
        return list(await conn.fetch(
            "SELECT status, error_code, stream FROM usage_records ORDER BY ts"))

    try:
        return await poll(rows, done, timeout)
    finally:
        await conn.close()


async def assert_cancelled_and_recorded(fake: FakeOpenAI, left: float, dsn: str,
                                        stream: bool) -> None:
    await asyncio.wait_for(fake.disconnected.wait(), timeout=CANCEL_WITHIN_S + 1)
    assert time.monotonic() - left < CANCEL_WITHIN_S
    rows = await rows_when(dsn, lambda found: len(found) >= 1)
    assert [(r["status"], r["error_code"], r["stream"]) for r in rows] == [
        (499, "client_disconnected", stream)]


async def test_a_client_that_leaves_a_non_stream_request_cancels_the_upstream_within_a_second(
    pg_gateway: Gateway, fake_openai: FakeOpenAI, fresh_pg: str,
) -> None:
    fake_openai.script(Hang())
    left = await send_and_leave(pg_gateway, "/v1/chat/completions",
                                {"model": "fake/gpt", "messages": USER},
                                lambda: fake_openai.hits == 1)
    await assert_cancelled_and_recorded(fake_openai, left, fresh_pg, stream=False)


async def test_a_client_that_leaves_an_embeddings_request_cancels_the_upstream_within_a_second(
    pg_gateway: Gateway, fake_openai: FakeOpenAI, fresh_pg: str,
) -> None:
    fake_openai.script(Hang())
    left = await send_and_leave(pg_gateway, "/v1/embeddings",
                                {"model": "fake/embed", "input": "hello"},
                                lambda: fake_openai.hits == 1)
    await assert_cancelled_and_recorded(fake_openai, left, fresh_pg, stream=False)


async def test_a_client_that_leaves_a_stream_with_a_silent_upstream_cancels_it_within_a_second(
    pg_gateway: Gateway, fake_openai: FakeOpenAI, fresh_pg: str,
) -> None:
    gate = Gate()
    fake_openai.script(Reply(text="one two three four", gate=gate))
    sent: list[bool] = []

    async def first_event() -> None:
        sent.append(await gate.release())  # the first event goes; the rest never come

    releaser = asyncio.create_task(first_event())
    left = await send_and_leave(pg_gateway, "/v1/chat/completions",
                                {"model": "fake/gpt", "messages": USER, "stream": True},
                                lambda: sent == [True])
    await releaser
    await assert_cancelled_and_recorded(fake_openai, left, fresh_pg, stream=True)
