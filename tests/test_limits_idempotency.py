"""An Idempotency-Key makes a client's retry share its request's reservation (over HTTP,
on Redis): a retry sent while the first attempt is still in flight is not refused for the
budget the first attempt holds, while a different request is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from harness import Gateway, gateway_settings, running_gateway

SLOW = """
[providers.slowsim]
protocol = "simulated"
latency_ms = 300

[[models]]
id = "slowsim/chat"
provider = "slowsim"
upstream = "chat"
input_price = 0.15
output_price = 0.60
"""
CHAT = {"model": "slowsim/chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
# 4 prompt tokens (the gateway's estimate for CHAT) at 150 nano-USD + 10 at 600.
WORST_CASE = 4 * 150 + 10 * 600


@pytest.fixture
async def gw(tmp_path: Path, redis_url: str, redis_namespace: str) -> AsyncIterator[Gateway]:
    settings = gateway_settings(tmp_path, f'redis_namespace = "{redis_namespace}"\n' + SLOW,
                                PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as g:
        yield g


async def test_retry_with_the_same_idempotency_key_does_not_reserve_twice(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    # Exactly one worst case of budget: a second reservation would be refused.
    resp = await http.post(gw.url + "/v1/api-keys", json={"limit": WORST_CASE / 1e9},
                           headers=gw.headers)
    key = (await resp.json())["key"]

    async def send(idempotency_key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
        await r.read()
        return r.status

    first = asyncio.create_task(send("order-42"))
    await asyncio.sleep(0.1)  # the first attempt holds its reservation upstream
    retry, other = await asyncio.gather(send("order-42"), send(None))
    assert (await first, retry, other) == (200, 200, 429)
