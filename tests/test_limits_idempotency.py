"""An Idempotency-Key makes a client's retry share its request's reservation (over HTTP,
on Redis): a retry sent while the first attempt is still in flight is not refused for the
budget the first attempt holds, while a different request is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from harness import Gateway, gateway_settings, running_gateway

from proxy.limits.memory import reservation_id

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


def test_reservation_ids_are_unique_and_a_forked_worker_draws_its_own() -> None:
    # Without an Idempotency-Key each request reserves under an id of its own; workers
    # forked from one parent must not count up from the same prefix.
    assert reservation_id("retry-me") == "i:retry-me"
    ids = {reservation_id(None) for _ in range(1000)}
    assert len(ids) == 1000
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave without pytest's teardown
        os.write(write_end, reservation_id(None).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    prefix = reservation_id(None).rsplit(":", 1)[0]
    assert child.startswith("r:")
    assert not child.startswith(prefix + ":")
