"""A chat request pays for its guarantees once: no idempotency coroutine without the
header, its usage looked at once when the upstream reported it, and the client watch reads
no connection state at admission (the scan does, four times a second)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import FakeAnthropic, FakeOpenAI
from harness import Gateway, gateway_settings, running_gateway

from proxy.api import pipeline
from proxy.api.relay import Outcome
from proxy.api.client_watch import ClientWatch
from proxy.catalog import Usage
from proxy.idempotency import Idempotency, Once

CHAT: dict[str, Any] = {"model": "fake/gpt", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "Tell me a story"}]}


@pytest.fixture
async def gw(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url)
    async with running_gateway(gateway_settings(tmp_path, toml)) as g:
        yield g


async def _chat(http: aiohttp.ClientSession, gw: Gateway, extra: dict[str, str]) -> int:
    made = await (await http.post(gw.url + "/v1/api-keys", json={},
                                  headers=gw.headers)).json()
    headers = {"Authorization": f"Bearer {made['key']}", **extra}
    async with http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
        await r.read()
        return r.status


async def test_a_request_without_an_idempotency_key_never_enters_the_guard(
    gw: Gateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    begin = Idempotency.begin

    async def counted(self: Idempotency, request: web.Request, key_id: str, route: str,
                      body: bytes) -> Once | None:
        calls.append(route)
        return await begin(self, request, key_id, route, body)

    monkeypatch.setattr(Idempotency, "begin", counted)
    assert await _chat(http, gw, {}) == 200
    assert calls == []
    assert await _chat(http, gw, {"Idempotency-Key": "k-1"}) == 200  # the guard still runs
    assert calls == ["chat"]


async def test_a_reported_usage_is_settled_once_a_request(
    gw: Gateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    settle = pipeline.settle_usage

    def counted(outcome: Outcome, req: Any) -> Usage:
        calls.append(1)
        return settle(outcome, req)

    monkeypatch.setattr(pipeline, "settle_usage", counted)
    assert await _chat(http, gw, {}) == 200
    assert len(calls) == 1  # `_complete`; the record reuses what it settled


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


async def test_the_client_watch_reads_the_connection_at_the_scan_not_at_admission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = _Transport()
    reads: list[int] = []

    def counted(self: web.BaseRequest) -> asyncio.BaseTransport:
        reads.append(1)
        return transport

    request = make_mocked_request("POST", "/v1/chat/completions")
    monkeypatch.setattr(web.BaseRequest, "transport", property(counted))
    watch = ClientWatch()

    async def handler() -> None:
        watch.watch(1, request)
        await asyncio.sleep(60)

    task = asyncio.create_task(handler())
    while len(watch) < 1:
        await asyncio.sleep(0)
    assert reads == []  # admission: no property call
    assert watch.scan() == 0 and reads == [1]
    transport.closing = True
    assert watch.scan() == 1  # a closed connection cancels its handler
    with pytest.raises(asyncio.CancelledError):
        await task
