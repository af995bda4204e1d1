"""`Idempotency-Key` over HTTP, on both backends (embedded, in-process; and Redis): a repeat
is never admitted past the spend limit, never sent upstream twice, never charged twice.

The upstream is the fake OpenAI server: it counts what reaches it, and a `Gate` holds a
stream in flight for as long as a test needs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import poll, wait_for
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import Cut, Fail, FakeAnthropic, FakeOpenAI, Gate, Reply
from harness import Gateway, gateway_settings, running_gateway
from multidict import CIMultiDict

from proxy.auth import Principal
from proxy.gateway import GATEWAY

USER = [{"role": "user", "content": "Tell me a story"}]
CHAT: dict[str, Any] = {"model": "fake/gpt", "messages": USER, "max_tokens": 16}
# The fake's default answer: 12 prompt tokens at 150 nano-USD, 4 completion at 600.
ONE_ANSWER_NUSD = 12 * 150 + 4 * 600
TINY_LIMIT_USD = 0.0001  # 100,000 nano-USD: about one worst case of CHAT


@pytest.fixture(params=["embedded", "redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, redis_url: str,
    redis_namespace: str,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url)
    env: dict[str, str] = {}
    if request.param == "redis":
        toml = f'redis_namespace = "{redis_namespace}"\n' + toml
        env["PROXY_REDIS_URL"] = redis_url
    async with running_gateway(gateway_settings(tmp_path, toml, **env)) as g:
        yield g


async def new_key(http: aiohttp.ClientSession, gw: Gateway, limit: float | None = None
                  ) -> tuple[str, dict[str, str]]:
    body = {"limit": limit} if limit is not None else {}
    made = await (await http.post(gw.url + "/v1/api-keys", json=body, headers=gw.headers)).json()
    return made["id"], {"Authorization": f"Bearer {made['key']}"}


async def post(http: aiohttp.ClientSession, gw: Gateway, headers: dict[str, str],
               body: dict[str, Any], key: str | None = None) -> tuple[int, bytes, Any]:
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.read(), r.headers


async def spend(gw: Gateway, key_id: str) -> int | None:
    limits = gw.app[GATEWAY].limits
    await limits.drain()  # type: ignore[attr-defined]
    return (await limits.spend([Principal(key_id)]))[0]


async def settled_spend(gw: Gateway, key_id: str, expected: int) -> int | None:
    """The key's spend once it reaches `expected` (or what it is after 10 s): a stream's
    client has [DONE] before the handler has settled it."""
    return await poll(lambda: spend(gw, key_id), lambda got: got == expected)


async def after_stream_end(http: aiohttp.ClientSession, gw: Gateway, headers: dict[str, str],
                           body: dict[str, Any], key: str) -> tuple[int, bytes, Any]:
    """A repeat of a stream's request: 409 from the moment its client has [DONE] until the
    handler has kept the answer (documented), then the replay."""
    got = await poll(lambda: post(http, gw, headers, body, key), lambda got: got[0] != 409)
    assert got[0] != 409, "never kept"
    return got


async def ledger_totals(http: aiohttp.ClientSession, gw: Gateway, key_id: str) -> tuple[int, int]:
    """(records, cost) of a key, once every record written so far is in: a request of a
    marker key goes after them (the ledger writes in order), and is waited for."""
    marker_id, marker = await new_key(http, gw)
    status, _, _ = await post(http, gw, marker, CHAT)
    assert status == 200

    async def marker_in() -> bool:
        url = f"{gw.url}/v1/api-keys/{marker_id}/usage"
        got = await (await http.get(url, headers=gw.headers)).json()
        return bool(got["total_requests"] == 1)

    await wait_for(marker_in, 10, "the marker key's record never came")
    got = await (await http.get(f"{gw.url}/v1/api-keys/{key_id}/usage", headers=gw.headers)).json()
    return got["total_requests"], got["total_cost_nusd"]


def sse_payloads(raw: bytes) -> list[str]:
    return [block[6:] for block in raw.decode().split("\n\n") if block.startswith("data: ")]


def streamed_text(raw: bytes) -> str:
    text = ""
    for payload in sse_payloads(raw):
        if payload == "[DONE]":
            continue
        for choice in json.loads(payload).get("choices") or ():
            text += choice["delta"].get("content") or ""
    return text


def streamed_usage(raw: bytes) -> dict[str, Any]:
    chunks = [json.loads(p) for p in sse_payloads(raw) if p != "[DONE]"]
    return next(c["usage"] for c in chunks if c.get("usage"))


async def test_concurrent_repeats_of_an_in_flight_key_get_409_or_422_and_never_reach_upstream(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # The finding: with a limit of $0.0001, a 2 s stream with Idempotency-Key K and 40
    # requests with the same header sent while it ran all got 200 and all went upstream.
    key_id, headers = await new_key(http, gw, TINY_LIMIT_USD)
    gate = Gate()
    fake_openai.script(Reply(text="a long story", gate=gate))
    body = {**CHAT, "stream": True}
    first = asyncio.ensure_future(post(http, gw, headers, body, "K"))
    await wait_for(lambda: fake_openai.hits == 1)  # claimed, admitted, upstream: in flight
    same = [post(http, gw, headers, body, "K") for _ in range(20)]
    other = [post(http, gw, headers, {**CHAT, "max_tokens": 17 + i}, "K") for i in range(20)]
    answers = await asyncio.gather(*same, *other)
    assert [a[0] for a in answers] == [409] * 20 + [422] * 20
    codes = [json.loads(a[1])["error"]["code"] for a in answers]
    assert codes == ["idempotency_in_progress"] * 20 + ["idempotency_key_reused"] * 20
    assert all(json.loads(a[1])["error"]["param"] == "Idempotency-Key" for a in answers)
    assert answers[0][2]["retry-after"] == "1"
    assert fake_openai.hits == 1
    await gate.release_all()
    status, raw, _ = await first
    assert status == 200 and streamed_text(raw) == "a long story"
    assert fake_openai.hits == 1
    spent = await settled_spend(gw, key_id, 12 * 150 + 3 * 600)  # "a long story"
    assert spent == 12 * 150 + 3 * 600  # one request's cost: the repeats charged nothing
    assert spent <= TINY_LIMIT_USD * 1e9
    assert await ledger_totals(http, gw, key_id) == (1, spent)


async def test_a_repeat_after_the_end_replays_the_same_body_without_upstream_or_charge(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, 1.0)
    status, first, _ = await post(http, gw, headers, CHAT, "order-42")
    assert status == 200
    # Re-serialized with its keys in another order: the same request.
    shuffled = dict(reversed(list(CHAT.items())))
    for body in (CHAT, shuffled):
        status, again, replay_headers = await post(http, gw, headers, body, "order-42")
        assert (status, again) == (200, first)  # byte for byte
        assert replay_headers["Idempotent-Replayed"] == "true"
        assert replay_headers["x-model"] == "fake/gpt"
    assert fake_openai.hits == 1
    assert await spend(gw, key_id) == ONE_ANSWER_NUSD
    assert json.loads(first)["usage"]["cost"] == ONE_ANSWER_NUSD / 1e9
    # One record, the first request's: the ledger equals the counter.
    assert await ledger_totals(http, gw, key_id) == (1, ONE_ANSWER_NUSD)


async def test_a_streamed_answer_is_replayed_as_a_stream_with_its_usage_and_cost(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, 1.0)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    status, first, _ = await post(http, gw, headers, body, "stream-1")
    assert status == 200
    status, again, replay_headers = await after_stream_end(http, gw, headers, body, "stream-1")
    assert status == 200 and replay_headers["Idempotent-Replayed"] == "true"
    assert replay_headers["Content-Type"].startswith("text/event-stream")
    assert streamed_text(again) == streamed_text(first) == "Hello from the fake."
    assert streamed_usage(again) == streamed_usage(first)
    assert streamed_usage(first)["cost"] == ONE_ANSWER_NUSD / 1e9
    assert sse_payloads(again)[-1] == "[DONE]"
    assert fake_openai.hits == 1
    assert await settled_spend(gw, key_id, ONE_ANSWER_NUSD) == ONE_ANSWER_NUSD
    assert await ledger_totals(http, gw, key_id) == (1, ONE_ANSWER_NUSD)


async def test_the_same_key_with_another_body_after_the_end_is_422_not_a_replay(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    _, headers = await new_key(http, gw, 1.0)
    assert (await post(http, gw, headers, CHAT, "K"))[0] == 200
    for changed in ({**CHAT, "max_tokens": 17}, {**CHAT, "stream": True},
                    {**CHAT, "requesty": {"user_id": "someone-else"}}):
        status, raw, _ = await post(http, gw, headers, changed, "K")
        assert status == 422 and json.loads(raw)["error"]["code"] == "idempotency_key_reused"
    assert fake_openai.hits == 1


async def test_two_api_keys_with_the_same_idempotency_key_do_not_collide(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    a_id, a = await new_key(http, gw, 1.0)
    b_id, b = await new_key(http, gw, 1.0)
    fake_openai.script(Reply(text="for a"), Reply(text="for b"))
    status_a, body_a, _ = await post(http, gw, a, CHAT, "shared")
    # Another body under the same header value: not 422, and not a's answer.
    status_b, body_b, _ = await post(http, gw, b, {**CHAT, "max_tokens": 20}, "shared")
    assert (status_a, status_b) == (200, 200)
    assert fake_openai.hits == 2
    assert json.loads(body_a)["choices"][0]["message"]["content"] == "for a"
    assert json.loads(body_b)["choices"][0]["message"]["content"] == "for b"
    assert (await post(http, gw, b, {**CHAT, "max_tokens": 20}, "shared"))[1] == body_b
    assert (await post(http, gw, a, CHAT, "shared"))[1] == body_a
    assert fake_openai.hits == 2
    assert await spend(gw, a_id) == await spend(gw, b_id) == 12 * 150 + 2 * 600  # "for x"


@pytest.mark.parametrize("value", [
    "k" * 256,  # too long
    "a\tb",  # a control character
    "",  # empty
])
async def test_a_malformed_idempotency_key_is_400_naming_the_header(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession, value: str
) -> None:
    _, headers = await new_key(http, gw, 1.0)
    status, raw, _ = await post(http, gw, headers, CHAT, value)
    error = json.loads(raw)["error"]
    assert status == 400
    assert (error["code"], error["param"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert "Idempotency-Key" in error["message"]
    assert fake_openai.hits == 0


async def test_a_non_ascii_or_repeated_idempotency_key_header_is_400(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    _, headers = await new_key(http, gw, 1.0)
    url = gw.url + "/v1/chat/completions"
    async with http.post(url, json=CHAT, headers={**headers, "Idempotency-Key": "clé"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "Idempotency-Key"
    twice = CIMultiDict(headers)
    twice.add("Idempotency-Key", "one")
    twice.add("Idempotency-Key", "two")
    async with http.post(url, json=CHAT, headers=twice) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_idempotency_key"
    assert (await post(http, gw, headers, CHAT, "k" * 255))[0] == 200  # the bound itself
    assert fake_openai.hits == 1


async def test_a_first_request_that_fails_gives_its_key_back_and_the_retry_is_admitted_again(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, 1.0)
    fake_openai.script(Fail(400, "bad upstream day"))
    status, _, _ = await post(http, gw, headers, CHAT, "retry-me")
    assert status == 400 and fake_openai.hits == 1
    status, raw, replay_headers = await post(http, gw, headers, CHAT, "retry-me")
    assert status == 200 and "Idempotent-Replayed" not in replay_headers
    assert fake_openai.hits == 2
    assert (await post(http, gw, headers, CHAT, "retry-me"))[1] == raw  # now kept
    assert fake_openai.hits == 2
    assert await spend(gw, key_id) == ONE_ANSWER_NUSD


async def test_a_request_refused_for_its_limit_gives_its_key_back(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, TINY_LIMIT_USD)
    # Use the budget up (the first request's actual cost is charged, then it is over).
    over = 0
    while (await post(http, gw, headers, CHAT))[0] == 200:
        over += 1
        assert over < 100
    hits = fake_openai.hits
    status, raw, _ = await post(http, gw, headers, CHAT, "after-quota")
    assert status == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota"
    # Raise the limit: the same key runs (it was not kept as in flight, nor as a 429).
    resp = await http.patch(f"{gw.url}/v1/api-keys/{key_id}/limit", json={"limit": 1.0},
                            headers=gw.headers)
    assert resp.status == 200
    status, _, _ = await post(http, gw, headers, CHAT, "after-quota")
    assert status == 200 and fake_openai.hits == hits + 1


async def test_embeddings_replay_their_answer_and_a_chat_key_is_not_theirs(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, 1.0)
    url = gw.url + "/v1/embeddings"
    body = {"model": "fake/embed", "input": ["one", "two"]}

    async def embed(payload: dict[str, Any], key: str) -> tuple[int, bytes, Any]:
        async with http.post(url, json=payload, headers={**headers, "Idempotency-Key": key}) as r:
            return r.status, await r.read(), r.headers

    status, first, _ = await embed(body, "E")
    assert status == 200
    status, again, replay_headers = await embed(body, "E")
    assert (status, again, replay_headers["Idempotent-Replayed"]) == (200, first, "true")
    assert fake_openai.hits == 1
    assert (await embed({**body, "input": ["three"]}, "E"))[0] == 422
    assert (await post(http, gw, headers, CHAT, "E"))[0] == 422  # another route: another request
    assert fake_openai.hits == 1
    spent = await spend(gw, key_id)
    assert spent is not None and spent > 0
    assert await ledger_totals(http, gw, key_id) == (1, spent)


async def test_a_cut_stream_gives_its_key_back_and_the_retry_runs_again(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    _, headers = await new_key(http, gw, 1.0)
    body = {**CHAT, "stream": True}
    fake_openai.script(Cut(after_events=2, reply=Reply(text="one two three four five")))
    status, raw, _ = await post(http, gw, headers, body, "cut")
    assert status == 200 and '"error"' in raw.decode()  # the error event ends the stream
    status, raw, replay_headers = await after_stream_end(http, gw, headers, body, "cut")
    assert status == 200 and "Idempotent-Replayed" not in replay_headers
    assert streamed_text(raw) == "Hello from the fake."
    assert fake_openai.hits == 2


async def test_a_replay_is_served_after_the_budget_is_spent_and_costs_nothing(
    gw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    key_id, headers = await new_key(http, gw, (ONE_ANSWER_NUSD - 1) / 1e9)
    status, first, _ = await post(http, gw, headers, CHAT, "paid")
    assert status == 200
    assert (await post(http, gw, headers, CHAT))[0] == 429  # the budget is spent
    for _ in range(5):
        assert (await post(http, gw, headers, CHAT, "paid"))[:2] == (200, first)
    assert fake_openai.hits == 1
    assert await spend(gw, key_id) == ONE_ANSWER_NUSD
    assert await ledger_totals(http, gw, key_id) == (1, ONE_ANSWER_NUSD)
