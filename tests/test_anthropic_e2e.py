"""Chat through the gateway to a fake Anthropic Messages API, plain and streamed."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from conftest import UPSTREAM_SECRET
from fakes import ErrorEvent, Fail, FakeAnthropic, Reply
from harness import ADMIN_KEY, Gateway

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
]


async def test_completion_is_translated_both_ways_with_cache_token_usage(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(Reply(text="Sunny.", prompt_tokens=50, completion_tokens=2,
                                cached_tokens=1000, cache_write_tokens=200))
    resp = await http.post(gateway.url + "/v1/chat/completions", headers=gateway.headers,
                           json={"model": "fake/claude", "messages": CONVERSATION,
                                 "max_tokens": 64})
    assert resp.status == 200
    sent = fake_anthropic.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == UPSTREAM_SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"] == "You are terse."
    assert sent.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}
    ]
    assert sent.json["model"] == "claude-3-5-haiku-20241022" and sent.json["max_tokens"] == 64
    body = await resp.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == "Sunny."
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 1250  # input + cache read + cache write
    assert usage["completion_tokens"] == 2
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1000
    expected = (50 * 0.80 + 1000 * 0.08 + 200 * 1.00 + 2 * 4.00) / 1e6
    assert usage["cost"] == pytest.approx(expected)


async def test_tool_use_and_tool_results_round_trip(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    messages = [
        *CONVERSATION,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    resp = await http.post(gateway.url + "/v1/chat/completions", headers=gateway.headers, json={
        "model": "fake/claude", "messages": messages,
        "tools": [{"type": "function",
                   "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    })
    assert resp.status == 200
    sent = fake_anthropic.last.json
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    result = sent["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "call_1"
    assert result["content"] in ("rain", [{"type": "text", "text": "rain"}])
    body = await resp.json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_is_translated_into_openai_chunks(
    gateway: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    fake_anthropic.script(Reply(text="It is sunny in Paris today.", prompt_tokens=20,
                                completion_tokens=7))
    text, finish, usage = "", None, None
    async with await client.chat.completions.create(  # type: ignore[call-overload]
        model="fake/claude", messages=CONVERSATION, stream=True,
        stream_options={"include_usage": True},
    ) as events:
        async for chunk in events:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
    assert text == "It is sunny in Paris today."
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == 20 and usage.completion_tokens == 7
    assert fake_anthropic.last.json["stream"] is True
    await client.close()


async def test_overloaded_529_is_502(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(Fail(status=529, message="Overloaded"))
    resp = await http.post(gateway.url + "/v1/chat/completions", headers=gateway.headers,
                           json={"model": "fake/claude", "messages": CONVERSATION})
    assert resp.status == 502
    assert "Overloaded" in (await resp.json())["error"]["message"]


async def test_error_event_mid_stream_becomes_sse_error(
    gateway: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake_anthropic.script(ErrorEvent(after_events=4, message="Overloaded"))
    resp = await http.post(gateway.url + "/v1/chat/completions", headers=gateway.headers,
                           json={"model": "fake/claude", "messages": CONVERSATION, "stream": True})
    raw = (await resp.read()).decode()
    last = [b for b in raw.split("\n\n") if b][-1]
    assert json.loads(last[6:])["error"]["message"].endswith("Overloaded")
