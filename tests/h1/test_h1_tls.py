"""TLS to the upstream with a local CA, and egress through a proxy (issue 16, finding 9).

The CA and the certificates are made at test time (`fakes.tls`); the upstream is an aiohttp
server with an SSL context; the proxy is `fakes.connect_proxy`, which counts its tunnels.
Every test runs on asyncio's loop and on uvloop (the gateway's), whose TLS differs.
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes import Reply
from fakes.connect_proxy import ConnectProxy
from fakes.openai_server import completion
from fakes.tls import LocalCA, server_context

from proxy.catalog import _model
from proxy.config import ModelConfig, ProviderConfig
from proxy.errors import UpstreamError
from proxy.providers.base import ChatCall
from proxy.providers.h1 import ConnectError, Endpoint, Pool, Proxies
from proxy.providers.http import transport_error
from proxy.providers.openai import OpenAIProvider
from proxy.wire import Message, decode_body

ANSWER = completion(Reply(text="over TLS"), {"model": "m"}, 1)
MODEL = _model(ModelConfig(id="up/m", provider="up", upstream="m"))
BODY = b'{"model":"up/m","messages":[{"role":"user","content":"hi"}]}'

Upstream = Callable[..., Awaitable[int]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """Start an OpenAI-shaped answerer, over TLS when given a context; returns its port."""
    runners: list[web.AppRunner] = []
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def start(context: ssl.SSLContext | None = None) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path)


def provider(port: int, *, tls: bool = True, **config: Any) -> OpenAIProvider:
    scheme = "https" if tls else "http"
    cfg = ProviderConfig(protocol="openai", base_url=f"{scheme}://localhost:{port}/v1",
                         timeout_s=10, connect_timeout_s=5, **config)
    return OpenAIProvider("up", cfg, "sk-upstream-tls-test-key-0123456789")


async def chat_through(p: OpenAIProvider, proxies: Proxies | None = None) -> bytes:
    """One chat call on a pool of the provider's settings and the given proxies."""
    p.pool = Pool(limit=4, timeout=10, connect_timeout=5, ca_file=p.config.ca_file,
                  proxies=proxies)
    try:
        call = ChatCall(MODEL, decode_body(BODY), [Message(role="user", content="hi")],
                        False, None)
        done = await p.chat(call)
        return bytes(done.payload["choices"])
    finally:
        await p.close()


async def test_valid_chain_from_the_configured_ca_file_is_trusted(
    upstream: Upstream, ca: LocalCA
) -> None:
    port = await upstream(server_context(*ca.issue("localhost")))
    assert b"over TLS" in await chat_through(provider(port, ca_file=str(ca.ca_file)))


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong_host", "the certificate does not match the host name"),
    ("expired", "the certificate has expired"),
    ("unknown_ca", "unknown certificate authority"),
    ("system_store", "unknown certificate authority"),
])
async def test_bad_certificate_is_refused_with_502_naming_the_reason(
    upstream: Upstream, ca: LocalCA, tmp_path: Path, case: str, reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trusted: str | None = str(ca.ca_file)
    if case == "wrong_host":
        port = await upstream(server_context(*ca.issue("other.example")))
    elif case == "expired":
        port = await upstream(server_context(*ca.issue("localhost", expired=True)))
    elif case == "unknown_ca":
        port = await upstream(server_context(*ca.issue("localhost")))
        trusted = str(LocalCA(tmp_path, "Other CA").ca_file)
    else:  # no ca_file: the system's store does not know the local CA
        port = await upstream(server_context(*ca.issue("localhost")))
        trusted = None
    with pytest.raises(UpstreamError) as info:
        await chat_through(provider(port, ca_file=trusted))
    err = info.value
    assert err.status == 502 and err.reason == "tls"
    assert reason in err.message and "localhost" not in err.message
    logged = [r.getMessage() for r in caplog.records if r.name == "proxy.upstream"]
    assert len(logged) == 1 and reason in logged[0] and f"localhost:{port}" in logged[0]
    assert "sk-upstream" not in logged[0]


async def test_https_upstream_is_reached_through_a_connect_tunnel(
    upstream: Upstream, ca: LocalCA, proxy: ConnectProxy
) -> None:
    port = await upstream(server_context(*ca.issue("localhost")))
    proxies = Proxies.from_env({"HTTPS_PROXY": proxy.url})
    p = provider(port, ca_file=str(ca.ca_file))
    assert b"over TLS" in await chat_through(p, proxies)
    assert proxy.tunnels == [(f"localhost:{port}", None)]


async def test_tunnel_still_checks_the_upstream_certificate(
    upstream: Upstream, ca: LocalCA, proxy: ConnectProxy
) -> None:
    port = await upstream(server_context(*ca.issue("other.example")))
    proxies = Proxies.from_env({"https_proxy": proxy.url})
    with pytest.raises(UpstreamError) as info:
        await chat_through(provider(port, ca_file=str(ca.ca_file)), proxies)
    assert "does not match the host name" in info.value.message
    assert len(proxy.tunnels) == 1


async def test_proxy_credentials_are_sent_and_a_407_is_a_clear_502(
    upstream: Upstream, ca: LocalCA
) -> None:
    expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
    proxy = ConnectProxy(require=expected)
    await proxy.start()
    try:
        port = await upstream(server_context(*ca.issue("localhost")))
        good = Proxies.from_env({"HTTPS_PROXY": f"http://user:p%40ss@127.0.0.1:{proxy.port}"})
        assert b"over TLS" in await chat_through(provider(port, ca_file=str(ca.ca_file)), good)
        assert proxy.tunnels == [(f"localhost:{port}", expected)]
        bad = Proxies.from_env({"HTTPS_PROXY": f"http://user:wrong@127.0.0.1:{proxy.port}"})
        with pytest.raises(UpstreamError) as info:
            await chat_through(provider(port, ca_file=str(ca.ca_file)), bad)
        assert info.value.status == 502 and info.value.reason == "proxy"
        assert "status 407" in info.value.message and "wrong" not in info.value.message
    finally:
        await proxy.stop()


async def test_http_upstream_is_forwarded_by_the_proxy_with_an_absolute_url(
    upstream: Upstream, proxy: ConnectProxy
) -> None:
    port = await upstream()
    proxies = Proxies.from_env({"HTTP_PROXY": proxy.url})
    assert b"over TLS" in await chat_through(provider(port, tls=False), proxies)
    assert proxy.forwarded == [(f"localhost:{port}", None)] and proxy.tunnels == []


@pytest.mark.parametrize("no_proxy", [
    "localhost", "example.com,.localhost", "*", "example.com, localhost:{port}"])
async def test_no_proxy_hosts_are_reached_directly(
    upstream: Upstream, ca: LocalCA, proxy: ConnectProxy, no_proxy: str
) -> None:
    port = await upstream(server_context(*ca.issue("localhost")))
    proxies = Proxies.from_env({"HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy.format(port=port)})
    assert b"over TLS" in await chat_through(provider(port, ca_file=str(ca.ca_file)), proxies)
    assert proxy.tunnels == []


def test_proxy_variables_read_lower_case_first_and_only_http_proxies() -> None:
    assert Proxies.from_env({}) is None
    assert Proxies.from_env({"NO_PROXY": "x"}) is None
    proxies = Proxies.from_env({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"})
    assert proxies is not None
    chosen = proxies.for_host("api.example.com", 443, tls=True)
    assert chosen is not None and (chosen.host, chosen.port) == ("a", 1)
    assert proxies.for_host("api.example.com", 80, tls=False) is None
    with pytest.raises(ValueError, match="HTTPS_PROXY: only http:// proxies"):
        Proxies.from_env({"HTTPS_PROXY": "https://secure-proxy:443"})


async def test_unreachable_proxy_is_a_connect_error_naming_the_proxy_not_its_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = Pool(limit=1, timeout=5, connect_timeout=2,
                proxies=Proxies.from_env({"HTTPS_PROXY": f"http://127.0.0.1:{port}"}))
    try:
        with pytest.raises(ConnectError) as info:
            await pool.post(Endpoint("https://api.example.com/v1", {}), b"{}")
    finally:
        await pool.close()
    mapped = transport_error("up", info.value)
    assert mapped.reason == "proxy" and "could not connect to the proxy" in mapped.message
    assert "127.0.0.1" not in mapped.message


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), [
    ("example.com", "api.example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("*.example.com", "api.example.com", 443, True),
    ("api.example.com:8443", "api.example.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.1.2.3", 443, False),
    ("::1", "::1", 443, True),
    ("", "api.example.com", 443, False),
])
def test_no_proxy_matches_domains_ports_and_address_ranges(
    no_proxy: str, host: str, port: int, direct: bool
) -> None:
    proxies = Proxies.from_env({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy})
    assert proxies is not None
    assert (proxies.for_host(host, port, tls=True) is None) is direct
