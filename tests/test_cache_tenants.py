"""The response cache per key owner, through HTTP: keys created with the admin API, one fake
OpenAI upstream whose hit count shows whether a request reached it, and the cache both
in-process (the embedded default) and in Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import UPSTREAM_SECRET
from fakes import Fail, FakeOpenAI, Reply
from harness import Gateway, gateway_settings, running_gateway

QUESTION = {"model": "up/gpt", "messages": [{"role": "user", "content": "What is a tenant?"}]}
OPT_IN = {**QUESTION, "requesty": {"cache": True}}


def upstream_toml(base_url: str) -> str:
    return f"""
[providers.up]
protocol = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_OPENAI_KEY"

[[models]]
id = "up/gpt"
provider = "up"
upstream = "gpt-up"
input_price = 1.0
output_price = 2.0

[[models]]
id = "up/backup"
provider = "up"
upstream = "gpt-backup"
input_price = 1.0
output_price = 2.0
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        fake.default = Reply(text="An owner of keys.", prompt_tokens=10, completion_tokens=4)
        yield fake


@pytest.fixture(params=["memory", "redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_namespace: str,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = upstream_toml(upstream.base_url)
    env = {}
    if request.param == "redis":
        toml = f'redis_namespace = "{redis_namespace}"\n' + toml
        env["PROXY_REDIS_URL"] = redis_url
    async with running_gateway(gateway_settings(tmp_path, toml, **env)) as g:
        yield g


async def new_key(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> dict[str, Any]:
    resp = await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)
    assert resp.status == 200, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def ask(
    http: aiohttp.ClientSession, gw: Gateway, key: str, body: dict[str, Any], **headers: str
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    resp = await http.post(gw.url + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}", **headers})
    assert resp.status == 200, await resp.text()
    return resp, await resp.json()


def hit(resp: aiohttp.ClientResponse) -> bool:
    return resp.headers.get("x-cache") == "HIT"


async def test_an_answer_cached_for_one_owner_is_never_served_to_another(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    acme = await new_key(http, gw, name="acme-a", owner="acme")
    globex = await new_key(http, gw, name="globex", owner="globex")
    acme_too = await new_key(http, gw, name="acme-b", owner="acme")

    first, first_body = await ask(http, gw, acme["key"], OPT_IN)
    assert not hit(first) and upstream.hits == 1

    other, other_body = await ask(http, gw, globex["key"], OPT_IN)
    assert not hit(other) and upstream.hits == 2  # another tenant: asked upstream again
    assert other_body["usage"]["cost"] > 0

    same, same_body = await ask(http, gw, acme_too["key"], OPT_IN)
    assert hit(same) and upstream.hits == 2  # another key of the same owner shares the entry
    assert same_body["usage"]["cost"] == 0
    assert same_body["choices"] == first_body["choices"]


async def test_keys_without_an_owner_share_the_admin_keys_default_tenant(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    plain = await new_key(http, gw)
    assert plain["owner"] == "default" and plain["cache"] is False
    admin_key = gw.headers["Authorization"].removeprefix("Bearer ")
    await ask(http, gw, admin_key, OPT_IN)
    resp, _ = await ask(http, gw, plain["key"], OPT_IN)
    assert hit(resp) and upstream.hits == 1


async def test_a_caching_key_is_served_from_the_cache_without_opting_in(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    made = await new_key(http, gw, owner="acme", cache=True)
    assert made["cache"] is True
    first, _ = await ask(http, gw, made["key"], QUESTION)
    second, body = await ask(http, gw, made["key"], QUESTION)
    assert (hit(first), hit(second), upstream.hits) == (False, True, 1)
    assert body["usage"]["cost"] == 0
    opted_out, _ = await ask(http, gw, made["key"], QUESTION, **{"x-cache": "false"})
    assert not hit(opted_out) and upstream.hits == 2


async def test_a_key_without_cache_is_not_cached_unless_the_request_opts_in(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    made = await new_key(http, gw, owner="acme")
    await ask(http, gw, made["key"], QUESTION)
    resp, _ = await ask(http, gw, made["key"], QUESTION)
    assert not hit(resp) and upstream.hits == 2


async def test_an_answer_from_a_fallback_model_is_not_replayed_for_a_plain_request(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    made = await new_key(http, gw, owner="acme")
    # up/gpt fails once; up/backup answers.
    upstream.script(Fail(status=503),
                    Reply(text="The backup speaking.", prompt_tokens=10, completion_tokens=3))
    with_fallback = {**OPT_IN, "models": ["up/backup"]}
    first, first_body = await ask(http, gw, made["key"], with_fallback)
    assert first.headers["x-model"] == "up/backup" and not hit(first)

    plain, plain_body = await ask(http, gw, made["key"], OPT_IN)
    assert not hit(plain), "a fallback model's answer was replayed for a plain request"
    assert plain.headers["x-model"] == "up/gpt"
    assert plain_body["choices"][0]["message"]["content"] == "An owner of keys."

    again, again_body = await ask(http, gw, made["key"], with_fallback)
    assert hit(again) and again.headers["x-model"] == "up/backup"
    assert again_body["choices"] == first_body["choices"]


async def usage_when(
    http: aiohttp.ClientSession, gw: Gateway, key_id: str, requests: int, limit_s: float = 5.0
) -> dict[str, Any]:
    """The key's usage report once it holds `requests` records (the ledger writes behind)."""
    deadline = time.monotonic() + limit_s
    while True:
        resp = await http.get(f"{gw.url}/v1/api-keys/{key_id}/usage", headers=gw.headers)
        assert resp.status == 200, await resp.text()
        report: dict[str, Any] = await resp.json()
        if report["total_requests"] >= requests or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.05)


async def test_a_cache_hit_costs_nothing_in_the_ledger(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    made = await new_key(http, gw, owner="acme", cache=True)
    _, first = await ask(http, gw, made["key"], QUESTION)
    second, again = await ask(http, gw, made["key"], QUESTION)
    assert hit(second) and again["usage"]["cost"] == 0 and upstream.hits == 1
    cost = first["usage"]["cost"]
    assert cost > 0

    report = await usage_when(http, gw, made["id"], 2)
    assert report["total_requests"] == 2
    assert report["total_cost"] == cost  # the hit added nothing
    assert report["total_cached_requests"] == 1
    assert report["total_savings"] == cost  # what the hit would have cost
    (row,) = report["breakdown"]
    assert (row["requests"], row["cached_requests"], row["cost"]) == (2, 1, cost)


async def test_a_paced_stream_is_cached_as_it_is_relayed_and_replayed_whole(
    gw: Gateway, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # Paced events reach the client from the upstream connection's callback; the cache
    # entry is collected there too.
    text = "An owner of keys, one word at a time."
    upstream.default = Reply(text=text, prompt_tokens=10, completion_tokens=9, interval_s=0.01)
    seen: list[tuple[bool, str]] = []
    for _ in range(2):
        resp = await http.post(gw.url + "/v1/chat/completions", json={**OPT_IN, "stream": True},
                               headers=gw.headers)
        assert resp.status == 200
        blocks = (await resp.read()).decode().split("\n\n")
        events = [block[6:] for block in blocks if block.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        seen.append((hit(resp), "".join(c["choices"][0]["delta"].get("content") or ""
                                        for c in chunks if c["choices"])))
    assert seen == [(False, text), (True, text)] and upstream.hits == 1
