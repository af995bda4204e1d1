"""What components count themselves reaches /metrics through their typed `stats()`: the
edge's connection slots, the admission journal's write errors, the response cache's Redis
errors (counted nowhere before), and no module of the gateway reads a component by name."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import aiohttp
import pytest
from harness import Gateway, gateway_settings, running_gateway
from test_edge_server import HEALTH, edge_gateway, read_response, read_until_closed
from test_metrics import total

from proxy.app import build_app
from proxy.gateway import GATEWAY

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_edge_connections_open_and_refused_at_the_cap_are_exported(
    tmp_path: Path,
) -> None:
    async with edge_gateway(tmp_path, "max_connections = 2") as gw:
        held = []
        for _ in range(2):
            reader, writer = await gw.connect()
            writer.write(HEALTH)
            assert (await read_response(reader))[0] == 200
            held.append(writer)
        reader, writer = await gw.connect()
        await read_until_closed(reader)  # the third is refused with 503
        writer.close()
        metrics = gw.server.runner.app[GATEWAY].metrics
        text = (await metrics.scrape()).decode()
        for w in held:
            w.close()
    assert total(text, "proxy_edge_connections_open") == 2
    assert total(text, "proxy_edge_connections_refused_total") == 1


async def test_admission_journal_write_errors_are_exported(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        gateway = gw.app[GATEWAY]
        journal = gateway.admissions
        assert journal is not None
        # The journal's file descriptor goes bad under it (a disk gone read-only, say).
        bad = os.open(os.devnull, os.O_RDONLY)
        good, journal._fd = journal._fd, bad
        try:
            journal.lease_used("lease-1", "key-1", "2026-12")
            journal.drain()
        finally:
            journal._fd = good
            os.close(bad)
        text = (await gateway.metrics.scrape()).decode()
    assert total(text, "proxy_admission_journal_errors_total") == 1


async def test_response_cache_redis_failures_count_in_redis_errors(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, PROXY_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    gateway = build_app(settings)[GATEWAY]
    try:
        assert await gateway.cache.get("some-key") is None  # a miss, served uncached
        text = (await gateway.metrics.scrape()).decode()
    finally:
        assert gateway.redis is not None
        await gateway.redis.aclose()
    assert total(text, "proxy_redis_errors_total", component="cache") == 1


async def test_upstream_pool_connections_are_exported_by_provider(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    body = {"model": "fake/gpt", "messages": [{"role": "user", "content": "hi"}]}
    resp = await http.post(gateway.url + "/v1/chat/completions", json=body,
                           headers=gateway.headers)
    assert resp.status == 200
    await resp.read()
    text = (await gateway.app[GATEWAY].metrics.scrape()).decode()
    # the one connection went back to the pool: open and idle, nobody waiting
    assert total(text, "proxy_upstream_connections_open", provider="fake") == 1
    assert total(text, "proxy_upstream_connections_idle", provider="fake") == 1
    assert total(text, "proxy_upstream_requests_waiting", provider="fake") == 0
    assert total(text, "proxy_upstream_connections_open", provider="fakeanthropic") == 0


@pytest.mark.parametrize("call", ["getattr", "hasattr"])
def test_no_gateway_module_reads_a_component_by_attribute_name(call: str) -> None:
    """A renamed attribute must fail type checking, not silently zero a metric."""
    pattern = re.compile(rf"\b{call}\(")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for path in sorted((ROOT / "proxy").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []


def test_metrics_health_and_gateway_import_without_type_checking_cycles() -> None:
    for module in ("proxy/health.py", "proxy/metrics/__init__.py", "proxy/metrics/sampling.py",
                   "proxy/metrics/recording.py", "proxy/gateway.py"):
        assert "TYPE_CHECKING" not in (ROOT / module).read_text(), module
