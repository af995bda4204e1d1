"""The gateway's upstream settings end to end (issue 16, finding 9): a provider's
`ca_file`, egress through `HTTPS_PROXY`, `max_response_bytes`, and what the client reads
when the upstream's certificate is refused."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from fakes import FakeOpenAI, Reply
from fakes.connect_proxy import ConnectProxy
from fakes.tls import LocalCA, server_context
from harness import gateway_settings, running_gateway

from proxy.config import ConfigError

USER = [{"role": "user", "content": "hi"}]
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "over TLS"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def toml(base_url: str, **extra: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f"""
[providers.up]
protocol = "openai"
base_url = "{base_url}"
regions = ["global"]
timeout_s = 10
{lines}
[[models]]
id = "up/m"
provider = "up"
upstream = "m"
"""


@pytest.fixture
async def tls_upstream() -> AsyncIterator[Callable[[ssl.SSLContext], Awaitable[int]]]:
    runners: list[web.AppRunner] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(ANSWER)

    async def start(context: ssl.SSLContext) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def ask(gw_url: str, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(
        gw_url + "/v1/chat/completions", json={"model": "up/m", "messages": USER},
        headers=headers,
    ) as resp:
        return resp.status, await resp.text()


async def test_gateway_reaches_a_private_ca_upstream_through_the_https_proxy(
    tmp_path: Path, tls_upstream: Callable[[ssl.SSLContext], Awaitable[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = LocalCA(tmp_path)
    port = await tls_upstream(server_context(*ca.issue("localhost")))
    proxy = ConnectProxy()
    await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = gateway_settings(
        tmp_path, toml(f"https://localhost:{port}/v1", ca_file=str(ca.ca_file)))
    try:
        async with running_gateway(settings) as gw:
            status, body = await ask(gw.url, gw.headers)
    finally:
        await proxy.stop()
    assert status == 200 and "over TLS" in body
    assert proxy.tunnels == [(f"localhost:{port}", None)]


async def test_expired_upstream_certificate_is_a_502_naming_the_reason(
    tmp_path: Path, tls_upstream: Callable[[ssl.SSLContext], Awaitable[int]],
) -> None:
    ca = LocalCA(tmp_path)
    port = await tls_upstream(server_context(*ca.issue("localhost", expired=True)))
    settings = gateway_settings(
        tmp_path, toml(f"https://localhost:{port}/v1", ca_file=str(ca.ca_file)))
    async with running_gateway(settings) as gw:
        status, body = await ask(gw.url, gw.headers)
    assert status == 502
    message = json.loads(body)["error"]["message"]
    assert "TLS: the certificate has expired" in message
    assert "localhost" not in message and str(port) not in message


async def test_non_streamed_body_over_max_response_bytes_is_a_clear_502(
    tmp_path: Path, fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script(Reply(text="word " * 2000))  # about 10 KB of JSON
    settings = gateway_settings(tmp_path, toml(fake_openai.base_url, max_response_bytes=4096))
    async with running_gateway(settings) as gw:
        status, body = await ask(gw.url, gw.headers)
    assert status == 502
    assert "larger than the gateway accepts" in json.loads(body)["error"]["message"]


def test_unreadable_ca_file_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key `providers\.up\.ca_file`: cannot read"):
        gateway_settings(tmp_path, toml("https://localhost:1/v1",
                                        ca_file=str(tmp_path / "missing.pem")))


def test_max_response_bytes_below_1024_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_response_bytes`: Expected int >= 1024"):
        gateway_settings(tmp_path, toml("https://localhost:1/v1", max_response_bytes=10))
