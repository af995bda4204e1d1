"""`/v1/messages` to an OpenAI-compatible provider: translated to chat and back, with the
official `anthropic` SDK as the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anthropic
import pytest
from dialect_support import cost, read_sse, records
from fakes import ErrorEvent, Fail, FakeAnthropic, FakeOpenAI, Gate, Reply
from harness import ADMIN_KEY, Gateway

USER = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def client(gw: Gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, auth_token=ADMIN_KEY, max_retries=0)


async def test_messages_to_openai_provider_are_translated_both_ways(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="Sunny.", prompt_tokens=40, completion_tokens=2,
                             cached_tokens=10))
    c = client(dgw)
    msg = await c.messages.create(  # type: ignore[call-overload]
        model="d/gpt", max_tokens=100, system="Be terse.", messages=USER,
        stop_sequences=["END"], metadata={"user_id": "claude-code-user"})
    sent = fake_openai.last.json
    assert fake_openai.last.path == "/v1/chat/completions"
    assert sent["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "Weather in Paris?"}]
    assert sent["model"] == "gpt-4o-mini-2024-07-18" and sent["stop"] == ["END"]
    assert "metadata" not in sent and "requesty" not in sent
    assert msg.type == "message" and msg.model == "d/gpt"
    assert msg.content[0].text == "Sunny." and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 30 and msg.usage.cache_read_input_tokens == 10
    [rec] = await records(dgw, 1)
    assert rec["route"] == "messages" and rec["user_id"] == "claude-code-user"
    assert rec["cost_nusd"] == cost("d/gpt", 40, 2, cached=10)


async def test_messages_tool_round_trip_translated(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]),
                       Reply(text="Rain."))
    c = client(dgw)
    first = await c.messages.create(model="d/gpt", max_tokens=64, messages=USER,  # type: ignore[call-overload]
                                    tools=TOOLS, tool_choice={"type": "any"})
    assert fake_openai.last.json["tool_choice"] == "required"
    assert fake_openai.last.json["tools"][0]["function"]["name"] == "get_weather"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.input == {"city": "Paris"} and first.stop_reason == "tool_use"
    second = await c.messages.create(
        model="d/gpt", max_tokens=64, tools=TOOLS,  # type: ignore[arg-type]
        messages=[*USER, {"role": "assistant", "content": first.content},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "rain"}]}])
    sent = fake_openai.last.json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "rain"}
    assert second.content[0].text == "Rain."  # type: ignore[union-attr]


async def test_messages_stream_translated_through_the_sdk_helper(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="It is sunny.", prompt_tokens=20, completion_tokens=4))
    c = client(dgw)
    async with c.messages.stream(model="d/gpt", max_tokens=64,
                                 messages=USER) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "It is sunny."
    assert final.usage.input_tokens == 20 and final.usage.output_tokens == 4
    assert final.stop_reason == "end_turn"
    [rec] = await records(dgw, 1)
    assert rec["stream"] == 1 and rec["cost_nusd"] == cost("d/gpt", 20, 4)


async def test_messages_stream_tool_call_translated(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(tool_calls=[("get_weather", '{"city": "Paris, France"}')]))
    c = client(dgw)
    async with c.messages.stream(model="d/gpt", max_tokens=64, messages=USER,  # type: ignore[arg-type]
                                 tools=TOOLS) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_message()
    call = final.content[0]
    assert call.type == "tool_use" and call.input == {"city": "Paris, France"}
    assert final.stop_reason == "tool_use"


async def test_translated_event_reaches_client_before_next_chunk_is_released(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake_openai.script(Reply(chunks=["alpha", " beta", " gamma"], gate=gate))
    request = asyncio.ensure_future(http.post(
        dgw.url + "/v1/messages", headers={"x-api-key": ADMIN_KEY},
        json={"model": "d/gpt", "max_tokens": 64, "messages": USER, "stream": True}))
    assert await gate.release()  # the role chunk: message_start
    resp = await request
    buf = bytearray()
    assert (await read_sse(resp, buf))[0] == "message_start"
    texts = []
    for piece in ("alpha", " beta", " gamma"):
        assert await gate.release()
        while True:  # its delta arrives before the next upstream chunk is let go
            name, data = await read_sse(resp, buf)
            if name == "content_block_delta":
                texts.append(data["delta"]["text"])
                break
        assert texts[-1] == piece
    await gate.release_all()
    names = []
    while True:
        name, _ = await read_sse(resp, buf)
        names.append(name)
        if name == "message_stop":
            break
    assert names[-2:] == ["message_delta", "message_stop"]


async def test_structured_output_over_messages_to_openai(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text='{"city": "Paris"}'))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    c = client(dgw)
    msg = await c.messages.create(
        model="d/gpt", max_tokens=64, messages=USER,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    fmt = fake_openai.last.json["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
    assert json.loads(msg.content[0].text) == {"city": "Paris"}  # type: ignore[union-attr]


async def test_what_chat_cannot_carry_is_a_400_naming_it_in_anthropics_shape(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await c.messages.create(
            model="d/gpt", max_tokens=64, messages=USER,  # type: ignore[arg-type]
            tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "tools[0]" in str(bad.value)
    with pytest.raises(anthropic.BadRequestError) as orphan:
        await c.messages.create(model="d/gpt", max_tokens=64, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x",
                                          "content": "rain"}]}])
    assert "toolu_x" in str(orphan.value)
    assert fake_openai.hits == 0


async def test_upstream_errors_reach_the_sdk_as_its_classes(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    fake_openai.script(Fail(429, "slow down", retry_after=1))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await c.messages.create(model="d/gpt", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    fake_openai.script(ErrorEvent(after_events=2, message="boom"))
    with pytest.raises(anthropic.APIStatusError):
        async with c.messages.stream(model="d/gpt", max_tokens=8,
                                     messages=USER) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass


async def test_policy_falls_back_from_anthropic_passthrough_to_translated_openai(
    dgw: Gateway, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    fake_anthropic.script(Fail(529, "Overloaded"))
    fake_openai.script(Reply(text="From GPT.", prompt_tokens=9, completion_tokens=3))
    c = client(dgw)
    msg = await c.messages.create(model="policy/mixed", max_tokens=32, messages=USER)  # type: ignore[arg-type]
    assert msg.content[0].text == "From GPT."  # type: ignore[union-attr]
    [rec] = await records(dgw, 1)
    assert rec["model"] == "d/gpt" and rec["attempts"] == 2
    assert rec["cost_nusd"] == cost("d/gpt", 9, 3)


async def test_count_tokens_is_estimated_for_a_provider_without_the_endpoint(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    counted = await c.messages.count_tokens(model="d/gpt", messages=USER)  # type: ignore[arg-type]
    assert counted.input_tokens > 0 and fake_openai.hits == 0


async def test_response_cache_replays_messages_in_messages_dialect(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body: dict[str, Any] = {"model": "d/gpt", "max_tokens": 16, "messages": USER}
    headers = {"x-api-key": ADMIN_KEY, "x-cache": "true"}
    first = await http.post(dgw.url + "/v1/messages", json=body, headers=headers)
    again = await http.post(dgw.url + "/v1/messages", json=body, headers=headers)
    assert again.headers["x-cache"] == "HIT" and fake_openai.hits == 1
    assert await again.json() == await first.json()
    chat = await http.post(dgw.url + "/v1/chat/completions", headers=headers,
                           json={"model": "d/gpt", "max_tokens": 16, "messages": USER})
    assert (await chat.json())["object"] == "chat.completion"  # never the Messages entry
    assert fake_openai.hits == 2
    rows = await records(dgw, 3)
    assert [r["cache_hit"] for r in rows] == [0, 1, 0]
    assert rows[1]["cost_nusd"] == 0 and rows[1]["savings_nusd"] == rows[0]["cost_nusd"]
