"""`/v1/messages` to an Anthropic-protocol provider: passed through, with the official
`anthropic` SDK as the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anthropic
import pytest
from dialect_support import CLAUDE_ALIAS, cost, read_sse, records
from fakes import ErrorEvent, Fail, FakeAnthropic, Gate, Reply
from harness import ADMIN_KEY, Gateway

USER = [{"role": "user", "content": "Weather in Paris?"}]


def client(gw: Gateway, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=ADMIN_KEY, max_retries=0, **kw)


async def test_messages_passthrough_keeps_unowned_fields_byte_for_byte(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(text="Sunny.", prompt_tokens=50, completion_tokens=2,
                                cached_tokens=1000, cache_write_tokens=200))
    c = client(dgw)
    extra = {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "user-42"},
        "system": [{"type": "text", "text": "Be terse.",
                    "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}}],
    }
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                          "data": "a doc"}}
    msg = await c.messages.create(  # type: ignore[call-overload]
        model="d/claude", max_tokens=2048,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, image, doc]}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31",
                       "anthropic-version": "2023-01-01"},
        **extra,
    )
    sent = fake_anthropic.last
    assert sent.path == "/v1/messages"
    assert sent.json["model"] == "claude-sonnet-4-5-20250929"  # the only field rewritten
    for name, value in extra.items():
        assert sent.json[name] == value
    assert sent.json["messages"][0]["content"][1:] == [image, doc]
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent.headers["anthropic-version"] == "2023-01-01"  # the client's, forwarded
    assert sent.headers["x-api-key"] != ADMIN_KEY  # the provider's key, not the client's
    assert msg.content[0].type == "text" and msg.content[0].text == "Sunny."
    assert msg.usage.input_tokens == 50 and msg.usage.cache_read_input_tokens == 1000
    [rec] = await records(dgw, 1)
    assert rec["route"] == "messages" and rec["user_id"] == "user-42"
    assert rec["prompt_tokens"] == 1250 and rec["completion_tokens"] == 2
    assert rec["cost_nusd"] == cost("d/claude", 1250, 2, cached=1000, written=200)
    await c.close()


async def test_claude_code_model_id_resolves_through_catalog_alias_with_beta_query(
    dgw: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    resp = await http.post(dgw.url + "/v1/messages?beta=true",
                           headers={"x-api-key": ADMIN_KEY, "anthropic-version": "2023-06-01"},
                           json={"model": CLAUDE_ALIAS, "max_tokens": 10, "messages": USER})
    assert resp.status == 200, await resp.text()
    assert resp.headers["x-model"] == "d/claude"
    [rec] = await records(dgw, 1)
    assert rec["model_requested"] == CLAUDE_ALIAS and rec["model"] == "d/claude"


async def test_messages_stream_through_the_sdk_helper_is_metered(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(chunks=["It ", "is ", "sunny."], prompt_tokens=20,
                                completion_tokens=3))
    c = client(dgw)
    async with c.messages.stream(model="d/claude", max_tokens=64,
                                 messages=USER) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "It is sunny."
    assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"
    [rec] = await records(dgw, 1)
    assert rec["stream"] == 1 and rec["route"] == "messages"
    assert rec["cost_nusd"] == cost("d/claude", 20, 3)
    await c.close()


async def test_messages_passthrough_stream_event_reaches_client_before_next_is_released(
    dgw: Gateway, fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake_anthropic.script(Reply(chunks=["a", "b", "c"], gate=gate))
    request = asyncio.ensure_future(http.post(
        dgw.url + "/v1/messages", headers={"x-api-key": ADMIN_KEY},
        json={"model": "d/claude", "max_tokens": 64, "messages": USER, "stream": True}))
    assert await gate.release()  # message_start: the gateway answers once it has it
    resp = await request
    buf = bytearray()
    names = [(await read_sse(resp, buf))[0]]
    while await gate.release():  # one upstream event at a time, each seen before the next
        names.append((await read_sse(resp, buf))[0])
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3


async def test_messages_tool_round_trip_passes_through(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]),
                          Reply(text="Rain in Paris."))
    c = client(dgw)
    tools = [{"name": "get_weather", "input_schema": {"type": "object",
              "properties": {"city": {"type": "string"}}}}]
    first = await c.messages.create(model="d/claude", max_tokens=64, messages=USER,  # type: ignore[arg-type]
                                    tools=tools)  # type: ignore[arg-type]
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    assert first.stop_reason == "tool_use"
    second = await c.messages.create(
        model="d/claude", max_tokens=64, tools=tools,  # type: ignore[arg-type]
        messages=[*USER, {"role": "assistant", "content": first.content},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "rain"}]}],
    )
    assert second.content[0].text == "Rain in Paris."  # type: ignore[union-attr]
    assert fake_anthropic.last.json["messages"][2]["content"][0]["tool_use_id"] == call.id
    await c.close()


async def test_messages_structured_output_passes_output_config_through(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(text='{"city": "Paris"}'))
    c = client(dgw)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    resp = await c.messages.create(
        model="d/claude", max_tokens=64, messages=USER,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert fake_anthropic.last.json["output_config"]["format"]["schema"] == schema
    assert json.loads(resp.content[0].text) == {"city": "Paris"}  # type: ignore[union-attr]
    await c.close()


async def test_upstream_refusal_reaches_the_sdk_as_its_exception_class(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    c = client(dgw)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await c.messages.create(model="d/claude", max_tokens=64,
                                messages=[{"role": "system", "content": "x"}])
    assert "role" in str(bad.value)
    assert fake_anthropic.refused  # the strict fake refused it, as Anthropic would
    fake_anthropic.script(Fail(429, "slow down", retry_after=1))
    with pytest.raises(anthropic.RateLimitError):
        await c.messages.create(model="d/claude", max_tokens=64, messages=USER)  # type: ignore[arg-type]
    await c.close()


async def test_auth_and_not_found_errors_are_in_anthropics_shape(
    dgw: Gateway, http: aiohttp.ClientSession
) -> None:
    bad = anthropic.AsyncAnthropic(base_url=dgw.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await bad.messages.create(model="d/claude", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    assert denied.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "Invalid API key."}}
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client(dgw).messages.create(model="nope", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    resp = await http.post(dgw.url + "/v1/messages", headers={"x-api-key": ADMIN_KEY},
                           json={"model": "d/claude", "messages": USER})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and "max_tokens" in body["error"]["message"]
    await bad.close()


async def test_error_event_mid_stream_is_anthropics_error_event(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ErrorEvent(after_events=3, message="Overloaded",
                                     error_type="overloaded_error"))
    c = client(dgw)
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with c.messages.stream(model="d/claude", max_tokens=64,
                                     messages=USER) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass
    assert "Overloaded" in str(failed.value)
    await c.close()


async def test_count_tokens_is_the_providers_and_free(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    c = client(dgw)
    counted = await c.messages.count_tokens(model="d/claude", messages=USER)  # type: ignore[arg-type]
    assert fake_anthropic.last.path == "/v1/messages/count_tokens"
    assert fake_anthropic.last.json["model"] == "claude-sonnet-4-5-20250929"
    assert counted.input_tokens > 0
    await c.messages.create(model="d/claude", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    rows = await records(dgw, 1)
    assert len(rows) == 1 and rows[0]["route"] == "messages"  # the count made no record
    await c.close()
