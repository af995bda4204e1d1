"""An Idempotency-Key never reaches the limits (over HTTP, on Redis): a retry sent while the
first attempt is in flight is answered 409 before admission, not admitted on the first
attempt's reservation; a different request is still refused for the budget the first
attempt holds. (Until issue 16 a retry shared the reservation, and so skipped the limit
test: the semantics changed by design, `tests/test_idempotency_http.py` has the rest.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import FakeAnthropic, FakeOpenAI, Gate, Reply
from harness import Gateway, gateway_settings, running_gateway
from ledger_support import wait_for

from proxy.limits.admission import reservation_id

CHAT = {"model": "fake/gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
        "stream": True}
# 4 prompt tokens (the gateway's estimate for CHAT) at 150 nano-USD + 10 at 600.
WORST_CASE = 4 * 150 + 10 * 600


@pytest.fixture
async def gw(tmp_path: Path, redis_url: str, redis_namespace: str, fake_openai: FakeOpenAI,
             fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
             ) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = f'redis_namespace = "{redis_namespace}"\n' + fake_provider_toml(
        fake_openai.base_url, fake_anthropic.base_url)
    settings = gateway_settings(tmp_path, toml, PROXY_REDIS_URL=redis_url)
    async with running_gateway(settings) as g:
        yield g


async def test_a_retry_while_the_first_is_in_flight_is_409_and_never_admitted(
    gw: Gateway, http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    # Exactly one worst case of budget: a second admission would be refused.
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

    gate = Gate()
    fake_openai.script(Reply(gate=gate))
    first = asyncio.create_task(send("order-42"))
    await wait_for(lambda: fake_openai.hits == 1)  # the first attempt holds its reservation
    retry, other = await asyncio.gather(send("order-42"), send(None))
    await gate.release_all()
    assert (await first, retry, other) == (200, 409, 429)
    assert fake_openai.hits == 1


def test_reservation_ids_are_unique_and_a_forked_worker_draws_its_own() -> None:
    # Each request reserves under an id of its own (an Idempotency-Key included); workers
    # forked from one parent must not count up from the same prefix.
    ids = {reservation_id() for _ in range(1000)}
    assert len(ids) == 1000
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave without pytest's teardown
        os.write(write_end, reservation_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    prefix = reservation_id().rsplit(":", 1)[0]
    assert child.startswith("r:")
    assert not child.startswith(prefix + ":")
