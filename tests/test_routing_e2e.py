"""Policies, fallbacks and the response cache through HTTP, against two fake providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import UPSTREAM_SECRET
from fakes import Cut, Fail, FakeOpenAI, Hang, Reply
from harness import Gateway, gateway_settings, running_gateway

USER = [{"role": "user", "content": "Route me"}]

Pair = tuple[Gateway, FakeOpenAI, FakeOpenAI]  # the `pair` fixture: a gateway, upstreams a and b


def two_provider_toml(a: str, b: str) -> str:
    return f"""
[providers.pa]
protocol = "openai"
base_url = "{a}"
api_key_env = "FAKE_OPENAI_KEY"
first_byte_timeout_s = 0.5

[providers.pb]
protocol = "openai"
base_url = "{b}"
api_key_env = "FAKE_OPENAI_KEY"

[[models]]
id = "a/gpt"
provider = "pa"
upstream = "gpt-a"
input_price = 1.0
output_price = 2.0

[[models]]
id = "b/gpt"
provider = "pb"
upstream = "gpt-b"
input_price = 1.0
output_price = 2.0

[policies.fb]
strategy = "fallback"
models = ["a/gpt", "b/gpt"]
retries = 1

[policies.once]
strategy = "fallback"
models = ["a/gpt", "b/gpt"]

[policies.lb]
strategy = "loadbalance"
models = ["a/gpt", "b/gpt"]
weights = [1, 1]
"""


@pytest.fixture
async def pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Gateway, FakeOpenAI, FakeOpenAI]]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        settings = gateway_settings(tmp_path, two_provider_toml(a.base_url, b.base_url))
        async with running_gateway(settings) as gw:
            yield gw, a, b


async def chat(
    http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any], **headers: str,
) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", json={"messages": USER, **body},
                           headers={**gw.headers, **headers})


async def test_fallback_retries_then_moves_to_the_next_model(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, b = pair
    a.script(Fail(status=503), Fail(status=503))
    b.script(Reply(text="from b"))
    resp = await chat(http, gw, {"model": "policy/fb"})
    assert resp.status == 200
    assert (a.hits, b.hits) == (2, 1)  # one try + one retry on a, then b
    assert resp.headers["x-model"] == "b/gpt"
    assert (await resp.json())["choices"][0]["message"]["content"] == "from b"


async def test_request_errors_are_returned_at_once_without_fallback(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, b = pair
    a.script(Fail(status=400, message="bad tool schema"))
    resp = await chat(http, gw, {"model": "policy/fb"})
    assert resp.status == 400
    assert "bad tool schema" in (await resp.json())["error"]["message"]
    assert (a.hits, b.hits) == (1, 0)


@pytest.mark.parametrize("status", [429, 500, 529])
async def test_each_upstream_fault_falls_through(
    pair: Pair, http: aiohttp.ClientSession, status: int,
) -> None:
    gw, a, b = pair
    a.script(Fail(status=status))
    resp = await chat(http, gw, {"model": "policy/once"})
    assert resp.status == 200 and resp.headers["x-provider"] == "pb"
    assert (a.hits, b.hits) == (1, 1)


async def test_everything_failing_is_502(pair: Pair, http: aiohttp.ClientSession) -> None:
    gw, a, b = pair
    a.script(Fail(status=500))
    b.script(Fail(status=503))
    resp = await chat(http, gw, {"model": "policy/once"})
    assert resp.status == 502
    assert (a.hits, b.hits) == (1, 1)


async def test_request_can_name_its_own_fallbacks(pair: Pair, http: aiohttp.ClientSession) -> None:
    gw, a, b = pair
    a.script(Fail(status=500))
    resp = await chat(http, gw, {"model": "a/gpt", "models": ["b/gpt"]})
    assert resp.status == 200 and resp.headers["x-model"] == "b/gpt"
    assert "models" not in b.last.json


async def test_stalled_first_token_falls_back_for_a_stream(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, b = pair
    a.script(Hang(headers=True))
    b.script(Reply(text="fast answer"))
    resp = await chat(http, gw, {"model": "policy/once", "stream": True})
    assert resp.status == 200 and resp.headers["x-model"] == "b/gpt"
    raw = (await resp.read()).decode()
    text = "".join(
        (json.loads(e[6:])["choices"][0]["delta"].get("content") or "")
        for e in raw.split("\n\n") if e.startswith("data: {")
    )
    assert text == "fast answer"


async def test_no_fallback_after_the_first_byte(pair: Pair, http: aiohttp.ClientSession) -> None:
    gw, a, b = pair
    a.script(Cut(after_events=2))
    resp = await chat(http, gw, {"model": "policy/fb", "stream": True})
    raw = (await resp.read()).decode()
    assert '"error"' in raw.rsplit("\n\n", 2)[-2]
    assert (a.hits, b.hits) == (1, 0)


async def test_loadbalance_is_sticky_on_trace_id(pair: Pair, http: aiohttp.ClientSession) -> None:
    gw, a, b = pair
    served = set()
    for _ in range(8):
        resp = await chat(http, gw, {"model": "policy/lb", "requesty": {"trace_id": "trace-42"}})
        served.add(resp.headers["x-model"])
    assert len(served) == 1
    assert a.hits + b.hits == 8


# --- response cache ------------------------------------------------------------------


async def test_cache_hit_never_reaches_upstream_and_costs_nothing(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, _ = pair
    a.script(Reply(text="cached words", prompt_tokens=10, completion_tokens=2))
    body = {"model": "a/gpt", "requesty": {"cache": True}}
    first = await chat(http, gw, body)
    assert first.headers.get("x-cache") != "HIT"
    first_body = await first.json()
    assert first_body["usage"]["cost"] > 0
    second = await chat(http, gw, body)
    assert second.headers["x-cache"] == "HIT"
    second_body = await second.json()
    assert second_body["choices"] == first_body["choices"]
    assert second_body["usage"]["cost"] == 0
    assert a.hits == 1


async def test_cache_header_opt_in_and_streamed_replay_has_same_content(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, _ = pair
    a.script(Reply(text="the same words again"))
    body = {"model": "a/gpt", "stream": True, "stream_options": {"include_usage": True}}

    def content(raw: str) -> tuple[str, list[str]]:
        chunks = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: {")]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        text = "".join(c["delta"].get("content") or "" for c in choices)
        finishes = [c["finish_reason"] for c in choices if c["finish_reason"]]
        return text, finishes

    first = (await (await chat(http, gw, body, **{"x-cache": "true"})).read()).decode()
    second_resp = await chat(http, gw, body, **{"x-cache": "true"})
    assert second_resp.headers["x-cache"] == "HIT"
    second = (await second_resp.read()).decode()
    assert content(first) == content(second) == ("the same words again", ["stop"])
    assert second.endswith("data: [DONE]\n\n")
    usage = json.loads([e for e in second.split("\n\n") if '"usage"' in e][-1][6:])["usage"]
    assert usage["cost"] == 0
    assert a.hits == 1


async def test_errors_and_cut_streams_are_never_cached(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, _ = pair
    a.script(Fail(status=500), Cut(after_events=2), Reply(text="finally"))
    body = {"model": "a/gpt", "requesty": {"cache": True}}
    assert (await chat(http, gw, body)).status == 502
    await (await chat(http, gw, {**body, "stream": True})).read()
    third = await chat(http, gw, body)
    assert third.headers.get("x-cache") != "HIT"
    assert (await third.json())["choices"][0]["message"]["content"] == "finally"
    assert a.hits == 3


async def test_uncached_requests_are_not_served_from_cache(
    pair: Pair, http: aiohttp.ClientSession,
) -> None:
    gw, a, _ = pair
    await chat(http, gw, {"model": "a/gpt", "requesty": {"cache": True}})
    resp = await chat(http, gw, {"model": "a/gpt"})
    assert resp.headers.get("x-cache") != "HIT"
    assert a.hits == 2
