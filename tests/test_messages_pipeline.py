"""What the chat path has, on the new routes: rate limits (refused in the route's own
error shape), idempotency, `X-Requesty-*` headers, metrics by route, cut streams charged
on an estimate."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest
from dialect_support import records
from fakes import Cut, FakeAnthropic, FakeOpenAI, Reply
from harness import ADMIN_KEY, Gateway

USER = [{"role": "user", "content": "Hi"}]


async def _key(http: aiohttp.ClientSession, gw: Gateway, **fields: object) -> str:
    resp = await http.post(gw.url + "/v1/api-keys", headers=gw.headers,
                           json={"name": "tenant", **fields})
    assert resp.status == 200, await resp.text()
    key: str = (await resp.json())["key"]
    return key


async def test_rate_limit_on_messages_is_anthropics_429_for_the_sdk(
    dgw: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await _key(http, dgw, rpm=1)
    c = anthropic.AsyncAnthropic(base_url=dgw.url, api_key=key, max_retries=0)
    await c.messages.create(model="d/claude", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as limited:
        await c.messages.create(model="d/claude", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    assert limited.value.body["type"] == "error"  # type: ignore[index]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers["retry-after"]
    o = openai.AsyncOpenAI(base_url=dgw.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as also:  # Responses keeps OpenAI's shape
        await o.responses.create(model="d/gpt", input="Hi")
    assert also.value.code == "rate_limit_exceeded"
    await c.close()
    await o.close()


async def test_idempotent_messages_repeat_is_replayed_not_charged(
    dgw: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    headers = {"x-api-key": ADMIN_KEY, "Idempotency-Key": "k-1"}
    body = {"model": "d/claude", "max_tokens": 8, "messages": USER, "stream": True}
    first = await http.post(dgw.url + "/v1/messages", json=body, headers=headers)
    sent = await first.read()
    again = await http.post(dgw.url + "/v1/messages", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"].startswith("text/event-stream")
    assert await again.read() == sent and fake_anthropic.hits == 1
    plain = {**body, "stream": False}
    headers["Idempotency-Key"] = "k-2"
    one = await (await http.post(dgw.url + "/v1/messages", json=plain, headers=headers)).read()
    two = await http.post(dgw.url + "/v1/messages", json=plain, headers=headers)
    assert await two.read() == one and fake_anthropic.hits == 2
    assert len(await records(dgw, 2)) == 2


async def test_requesty_headers_and_route_label_reach_ledger_and_metrics(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(dgw.url + "/v1/responses", json={"model": "d/gpt", "input": "Hi"},
                           headers={**dgw.headers, "X-Requesty-Team": "search"})
    assert resp.status == 200
    [rec] = await records(dgw, 1)
    assert rec["route"] == "responses" and '"team":"search"' in rec["headers"].replace(" ", "")
    text = await (await http.get(dgw.url + "/metrics")).text()
    assert 'route="responses"' in text


async def test_cut_translated_stream_is_charged_on_an_estimate(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Cut(after_events=3, reply=Reply(text="one two three four five")))
    resp = await http.post(dgw.url + "/v1/messages", headers={"x-api-key": ADMIN_KEY},
                           json={"model": "d/gpt", "max_tokens": 64, "messages": USER,
                                 "stream": True})
    raw = (await resp.read()).decode()
    assert "event: error" in raw and "message_stop" not in raw
    [rec] = await records(dgw, 1)
    assert rec["status"] == 502 and rec["estimated"] == 1
    assert rec["completion_tokens"] > 0 and rec["cost_nusd"] > 0


async def test_dialect_metadata_is_bounded_like_requesty_metadata(
    dgw: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    http: aiohttp.ClientSession,
) -> None:
    resp = await http.post(dgw.url + "/v1/messages", headers={"x-api-key": ADMIN_KEY}, json={
        "model": "d/claude", "max_tokens": 8, "messages": USER,
        "metadata": {"user_id": "a\u0000b"}})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and "metadata" in body["error"]["message"]
    resp = await http.post(dgw.url + "/v1/responses", headers=dgw.headers, json={
        "model": "d/gpt", "input": "Hi", "metadata": {f"k{i}": "v" for i in range(33)}})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "metadata"
    assert fake_openai.hits == 0 and fake_anthropic.hits == 0
