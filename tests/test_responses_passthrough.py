"""`/v1/responses` to a provider marked `responses_api = true`: passed through, with the
official `openai` SDK as the client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
from dialect_support import cost, read_sse, records
from fakes import ErrorEvent, Fail, FakeOpenAI, Gate, Reply
from harness import ADMIN_KEY, Gateway
from pydantic import BaseModel


class City(BaseModel):
    city: str


def client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0)


async def test_responses_passthrough_rewrites_only_model_and_store_default(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="Sunny.", prompt_tokens=30, completion_tokens=2,
                             cached_tokens=8))
    c = client(dgw)
    resp = await c.responses.create(
        model="d/resp", input="Weather?", reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"], user="u-1")
    sent = fake_openai.last
    assert sent.path == "/v1/responses"
    assert sent.json["model"] == "gpt-5-mini" and sent.json["store"] is False
    assert sent.json["reasoning"] == {"effort": "low", "summary": "auto"}
    assert sent.json["include"] == ["reasoning.encrypted_content"]
    assert resp.output_text == "Sunny."
    [rec] = await records(dgw, 1)
    assert rec["route"] == "responses" and rec["provider"] == "dresp"
    assert rec["prompt_tokens"] == 30 and rec["cached_tokens"] == 8
    assert rec["cost_nusd"] == cost("d/resp", 30, 2, cached=8)
    await c.close()


async def test_previous_response_id_and_store_pass_through_to_a_responses_provider(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    c = client(dgw)
    await c.responses.create(model="d/resp", input="Again", store=True,
                             previous_response_id="resp_abc")
    assert fake_openai.last.json["previous_response_id"] == "resp_abc"
    assert fake_openai.last.json["store"] is True
    await c.close()


async def test_responses_passthrough_stream_sdk_helper_and_ledger(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(text="It is sunny.", prompt_tokens=22, completion_tokens=4))
    c = client(dgw)
    async with c.responses.stream(model="d/resp", input="Weather?") as stream:
        text = "".join([e.delta async for e in stream
                        if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == "It is sunny." and final.status == "completed"
    [rec] = await records(dgw, 1)
    assert rec["stream"] == 1 and rec["cost_nusd"] == cost("d/resp", 22, 4)
    await c.close()


async def test_responses_passthrough_event_reaches_client_before_next_is_released(
    dgw: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake_openai.script(Reply(chunks=["a", "b"], gate=gate))
    request = asyncio.ensure_future(http.post(
        dgw.url + "/v1/responses", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "d/resp", "input": "Hi", "stream": True}))
    assert await gate.release()
    resp = await request
    buf = bytearray()
    names = [(await read_sse(resp, buf))[0]]
    while await gate.release():
        names.append((await read_sse(resp, buf))[0])
    assert names[0] == "response.created" and names[-1] == "response.completed"


async def test_responses_passthrough_tools_and_parse(
    dgw: Gateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply(tool_calls=[("get_weather", '{"city": "Paris"}')]),
                       Reply(text='{"city": "Paris"}'))
    c = client(dgw)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    first = await c.responses.create(model="d/resp", input="Weather?", tools=tools)  # type: ignore[arg-type]
    call = next(i for i in first.output if i.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert fake_openai.last.json["tools"] == tools
    parsed = await c.responses.parse(model="d/resp", input="Where?", text_format=City)
    assert parsed.output_parsed == City(city="Paris")
    assert fake_openai.last.json["text"]["format"]["type"] == "json_schema"
    await c.close()


async def test_responses_passthrough_errors(dgw: Gateway, fake_openai: FakeOpenAI) -> None:
    c = client(dgw)
    fake_openai.script(Fail(400, "bad input"))
    with pytest.raises(openai.BadRequestError):
        await c.responses.create(model="d/resp", input="Hi")
    fake_openai.script(ErrorEvent(after_events=3, message="boom"))
    async with c.responses.stream(model="d/resp", input="Hi") as stream:
        events = [e async for e in stream]
    assert events[-1].type == "error" and "boom" in events[-1].message
    await c.close()
