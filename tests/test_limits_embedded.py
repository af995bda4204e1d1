"""The embedded default (SQLite, no Redis): in-process limits whose budget survives a restart."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from harness import gateway_settings, running_gateway

from proxy.gateway import GATEWAY
from proxy.limits.memory import MemoryLimits

CHAT = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def test_a_restart_does_not_reset_a_keys_budget(
    tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    settings = gateway_settings(tmp_path)
    async with running_gateway(settings) as gw:
        limits = gw.app[GATEWAY].limits
        assert isinstance(limits, MemoryLimits)
        resp = await http.post(gw.url + "/v1/api-keys", json={"limit": 0.00005}, headers=gw.headers)
        made = await resp.json()
        headers = {"Authorization": f"Bearer {made['key']}"}
        statuses = []
        for _ in range(20):  # until the budget is used up
            r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
            statuses.append(r.status)
            if r.status == 429:
                break
            await limits.drain()
        assert statuses[0] == 200 and statuses[-1] == 429
        got = await (await http.get(f"{gw.url}/v1/api-keys/{made['id']}",
                                    headers=gw.headers)).json()
        spent = got["spend"]
        assert spent >= 0.00005
    async with running_gateway(settings) as gw:  # a new process: counters start from disk
        r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status == 429 and r.headers["x-should-retry"] == "false"
        got = await (await http.get(f"{gw.url}/v1/api-keys/{made['id']}",
                                    headers=gw.headers)).json()
        assert got["spend"] == spent
