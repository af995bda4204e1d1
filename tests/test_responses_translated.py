"""`/v1/responses` translated to chat: to an OpenAI-compatible provider that speaks only
Chat Completions, and to an Anthropic provider (chat, then the Anthropic adapter), with
the official `openai` SDK as the client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
from dialect_support import cost, read_sse, records
from fakes import ErrorEvent, Fail, FakeAnthropic, FakeOpenAI, Gate, Reply
from harness import ADMIN_KEY, Gateway
from pydantic import BaseModel

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"], "additionalProperties": False},
          "strict": True}]


class City(BaseModel):
    city: str


def client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["d/gpt", "d/claude"])
async def test_responses_plain_is_translated_and_metered(
    dgw: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, model: str
) -> None:
    fake = fake_openai if model == "d/gpt" else fake_anthropic
    fake.script(Reply(text="Sunny.", prompt_tokens=30, completion_tokens=2))
    c = client(dgw)
    resp = await c.responses.create(model=model, instructions="Be terse.",
                                    input="Weather in Paris?", max_output_tokens=50,
                                    user="u-7", metadata={"team": "search"})
    assert resp.output_text == "Sunny." and resp.status == "completed"
    assert resp.usage is not None and resp.usage.output_tokens == 2
    sent = fake.last
    if model == "d/gpt":
        assert sent.path == "/v1/chat/completions"
        assert sent.json["messages"][0] == {"role": "system", "content": "Be terse."}
        assert sent.json["max_completion_tokens"] == 50
    else:
        assert sent.path == "/v1/messages"
        assert sent.json["system"] == "Be terse." and sent.json["max_tokens"] == 50
    [rec] = await records(dgw, 1)
    assert rec["route"] == "responses" and rec["user_id"] == "u-7"
    assert json.loads(rec["extra"]) == {"team": "search"}
    assert rec["cost_nusd"] == cost(model, 30, 2)
    await c.close()


@pytest.mark.parametrize("model", ["d/gpt", "d/claude"])
async def test_responses_stream_through_the_sdk_helper(
    dgw: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, model: str
) -> None:
    fake = fake_openai if model == "d/gpt" else fake_anthropic
    fake.script(Reply(text="It is sunny.", prompt_tokens=25, completion_tokens=4))
    c = client(dgw)
    async with c.responses.stream(model=model, input="Weather?") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "It is sunny." and final.output_text == "It is sunny."
    assert final.usage is not None and final.usage.input_tokens == 25
    [rec] = await records(dgw, 1)
    assert rec["stream"] == 1 and rec["cost_nusd"] == cost(model, 25, 4)
    await c.close()


@pytest.mark.parametrize("model", ["d/gpt", "d/claude"])
async def test_responses_function_call_round_trip(
    dgw: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, model: str
) -> None:
    fake = fake_openai if model == "d/gpt" else fake_anthropic
    fake.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]), Reply(text="Rain."))
    c = client(dgw)
    first = await c.responses.create(model=model, input="Weather in Paris?",
                                     tools=TOOLS)  # type: ignore[arg-type]
    call = next(i for i in first.output if i.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = await c.responses.create(model=model, tools=TOOLS, input=[  # type: ignore[arg-type]
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert second.output_text == "Rain."
    if model == "d/claude":
        turns = fake_anthropic.last.json["messages"]
        assert turns[1]["content"][0]["type"] == "tool_use"
        assert turns[2]["content"][0]["tool_use_id"] == call.call_id
    else:
        assert fake_openai.last.json["messages"][2]["tool_call_id"] == call.call_id
    await c.close()


@pytest.mark.parametrize("model", ["d/gpt", "d/claude"])
async def test_responses_structured_output_parse_works(
    dgw: Gateway, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, model: str
) -> None:
    if model == "d/gpt":
        fake_openai.script(Reply(text='{"city": "Paris"}'))
    else:  # the forced output tool's input is the answer
        fake_anthropic.script(Reply(tool_calls=[("json_output", '{"city": "Paris"}')]))
    c = client(dgw)
    parsed = await c.responses.parse(model=model, input="Where?", text_format=City)
    assert parsed.output_parsed == City(city="Paris")
    if model == "d/claude":
        sent = fake_anthropic.last.json
        assert sent["tool_choice"] == {"type": "tool", "name": "json_output"}
    await c.close()


async def test_responses_incomplete_when_cut_by_max_output_tokens(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="Long", finish_reason="length"))
    c = client(dgw)
    resp = await c.responses.create(model="d/gpt", input="Write a lot.", max_output_tokens=1)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    await c.close()


async def test_responses_only_fields_never_reach_a_chat_only_provider(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    await c.responses.create(model="d/gpt", input="Hi", store=False, truncation="auto",
                             include=["message.output_text.logprobs"],
                             reasoning={"effort": "low"}, text={"verbosity": "low"})
    assert not fake_openai.refused  # the chat-only fake refuses any Responses-only field
    with pytest.raises(openai.BadRequestError) as bad:
        await c.responses.create(model="d/gpt", input="Hi", previous_response_id="resp_1")
    assert "previous_response_id" in str(bad.value)
    await c.close()


async def test_translated_responses_event_reaches_client_before_next_chunk(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake_openai.script(Reply(chunks=["alpha", " beta"], gate=gate))
    request = asyncio.ensure_future(http.post(
        dgw.url + "/v1/responses", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "d/gpt", "input": "Hi", "stream": True}))
    assert await gate.release()
    resp = await request
    buf = bytearray()
    assert (await read_sse(resp, buf))[0] == "response.created"
    for piece in ("alpha", " beta"):
        assert await gate.release()
        while True:
            name, data = await read_sse(resp, buf)
            if name == "response.output_text.delta":
                assert data["delta"] == piece
                break
    await gate.release_all()
    name = None
    while name != "response.completed":
        name, _ = await read_sse(resp, buf)


async def test_translated_responses_errors_are_openai_exceptions(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    fake_openai.script(Fail(429, "slow down", retry_after=1))
    with pytest.raises(openai.RateLimitError):
        await c.responses.create(model="d/gpt", input="Hi")
    fake_openai.script(ErrorEvent(after_events=3, message="boom"))
    async with c.responses.stream(model="d/gpt", input="Hi") as stream:
        events = [e async for e in stream]
    # As OpenAI ends a stream that failed after its start: `error`, then `response.failed`.
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "boom" in events[-2].message  # type: ignore[union-attr]
    await c.close()
