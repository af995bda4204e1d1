"""Redis going away and coming back, on a redis-server of the test's own (own port, no
persistence, so a restart loses every counter): requests keep being served, and the
budget afterwards is the budget before plus what was spent meanwhile. With
`limits.fail_closed` the gateway refuses instead.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import wait_for
import redis
from harness import Gateway, gateway_settings, running_gateway

from proxy.gateway import GATEWAY
from proxy.limits.redis import RedisLimits

SLOW_SIM = """
[providers.slowsim]
protocol = "simulated"
latency_ms = 20

[[models]]
id = "slowsim/chat"
provider = "slowsim"
upstream = "chat"
input_price = 0.15
output_price = 0.60
"""
CHAT = {"model": "slowsim/chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class OwnRedis:
    """A redis-server on a free port that the test stops and starts."""

    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tmp
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def until(check: Callable[[], bool], limit: float = 10.0) -> None:
    await wait_for(check, limit, "condition not reached")


@pytest.fixture
async def gw(
    tmp_path: Path, own_redis: OwnRedis, request: pytest.FixtureRequest,
) -> AsyncIterator[Gateway]:
    extra = "[limits]\nfail_closed = true\n" if "fail_closed" in request.node.name else ""
    settings = gateway_settings(tmp_path, SLOW_SIM + extra, PROXY_REDIS_URL=own_redis.url)
    async with running_gateway(settings) as g:
        yield g


def limits_of(gw: Gateway) -> RedisLimits:
    limits = gw.app[GATEWAY].limits
    assert isinstance(limits, RedisLimits)
    return limits


async def spend_of(http: aiohttp.ClientSession, gw: Gateway, key_id: str) -> int:
    await limits_of(gw).drain()
    got = await (await http.get(f"{gw.url}/v1/api-keys/{key_id}", headers=gw.headers)).json()
    return round(float(got["spend"]) * 1e9)


async def test_redis_restart_during_traffic_keeps_serving_and_keeps_the_budget(
    gw: Gateway, own_redis: OwnRedis, http: aiohttp.ClientSession
) -> None:
    limits = limits_of(gw)
    resp = await http.post(gw.url + "/v1/api-keys", json={"limit": 10}, headers=gw.headers)
    made = await resp.json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    statuses: list[int] = []
    costs: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
            body = await r.json()
            statuses.append(r.status)
            if r.status == 200:
                costs.append(round(body["usage"]["cost"] * 1e9))

    async def run_traffic(during: Callable[[], Any]) -> None:
        stop.clear()
        loops = [asyncio.create_task(traffic()) for _ in range(4)]
        await during()
        stop.set()
        await asyncio.gather(*loops)

    await run_traffic(lambda: asyncio.sleep(0.3))
    before = await spend_of(http, gw, made["id"])
    assert before == sum(costs) > 0
    spent_before, costs[:] = len(costs), []

    async def outage() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(own_redis.stop)  # requests are in flight right now
        await until(lambda: limits.degraded)
        served = len(statuses)
        await until(lambda: len(statuses) > served + 20)  # served while Redis is down
        await asyncio.to_thread(own_redis.start)  # empty: every counter is gone
        await until(lambda: not limits.degraded)
        await asyncio.sleep(0.2)

    await run_traffic(outage)
    assert set(statuses) == {200}, "a request failed during the outage"
    assert limits.redis_errors > 0 and spent_before > 0
    after = await spend_of(http, gw, made["id"])
    assert after == before + sum(costs)


async def test_fail_closed_refuses_with_503_while_redis_is_down(
    gw: Gateway, own_redis: OwnRedis, http: aiohttp.ClientSession
) -> None:
    async def status() -> tuple[int, dict[str, Any]]:
        r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=gw.headers)
        return r.status, await r.json()

    assert (await status())[0] == 200
    own_redis.stop()
    code, body = await status()
    assert code == 503 and body["error"]["code"] == "limits_unavailable"
    own_redis.start()
    await until(lambda: not limits_of(gw).degraded)
    assert (await status())[0] == 200
