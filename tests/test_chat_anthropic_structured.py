"""Chat Completions to Anthropic models: `response_format` honoured (a forced tool whose
input is the answer), what Anthropic cannot honour refused by name, advisory fields
dropped; with the official `openai` SDK as the client."""

from __future__ import annotations

import openai
import pytest
from dialect_support import cost, records
from fakes import FakeAnthropic, Reply
from harness import ADMIN_KEY, Gateway
from pydantic import BaseModel

from proxy.catalog import Model
from proxy.providers.anthropic import StreamTranslator, build_request, to_completion
from proxy.providers.base import ChatCall
from proxy.wire import Message, encode_raw

USER = [{"role": "user", "content": "Where is the Eiffel tower?"}]


class City(BaseModel):
    city: str


def client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0)


async def test_chat_parse_against_an_anthropic_model_returns_the_schema_answer(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(tool_calls=[("json_output", '{"city": "Paris"}')],
                                prompt_tokens=40, completion_tokens=6))
    c = client(dgw)
    done = await c.chat.completions.parse(model="d/claude", messages=USER,  # type: ignore[arg-type]
                                          response_format=City)
    message = done.choices[0].message
    assert message.parsed == City(city="Paris") and not message.tool_calls
    assert done.choices[0].finish_reason == "stop"
    sent = fake_anthropic.last.json
    assert sent["tool_choice"] == {"type": "tool", "name": "json_output"}
    assert sent["tools"][0]["input_schema"]["properties"] == {"city": {"title": "City",
                                                                       "type": "string"}}
    [rec] = await records(dgw, 1)
    assert rec["cost_nusd"] == cost("d/claude", 40, 6)
    await c.close()


async def test_chat_stream_with_json_object_streams_the_answer_as_content(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(tool_calls=[("json_output", '{"city": "Paris, France"}')]))
    c = client(dgw)
    stream = await c.chat.completions.create(model="d/claude", messages=USER,  # type: ignore[call-overload]
                                             response_format={"type": "json_object"},
                                             stream=True)
    text, finish, calls = "", None, 0
    async for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            text += delta.content or ""
            calls += len(delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    assert text == '{"city": "Paris, France"}' and calls == 0 and finish == "stop"
    assert fake_anthropic.last.json["tools"][0]["input_schema"] == {"type": "object"}
    await c.close()


@pytest.mark.parametrize(("extra", "name"), [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
    ({"n": 2}, "n"),
])
async def test_fields_anthropic_cannot_honour_are_a_400_naming_them(
    dgw: Gateway, fake_anthropic: FakeAnthropic, extra: dict[str, object], name: str
) -> None:
    c = client(dgw)
    with pytest.raises(openai.BadRequestError) as bad:
        await c.chat.completions.create(model="d/claude", messages=USER,  # type: ignore[call-overload]
                                        **extra)
    assert bad.value.param == name and fake_anthropic.hits == 0
    await c.close()


async def test_seed_is_dropped_and_user_becomes_anthropics_metadata_user_id(
    dgw: Gateway, fake_anthropic: FakeAnthropic
) -> None:
    c = client(dgw)
    await c.chat.completions.create(model="d/claude", messages=USER, seed=7,  # type: ignore[arg-type]
                                    user="someone")
    sent = fake_anthropic.last.json
    assert "seed" not in sent and "user" not in sent
    assert sent["metadata"] == {"user_id": "someone"}
    await c.close()


def _call(fields: dict[str, object]) -> ChatCall:
    model = Model("m", "p", "claude-x", "chat", "p", 0, 1024, 0, 0, 0, 0, 0.0, 0.0)
    raw = {k: encode_raw(v) for k, v in fields.items()}
    return ChatCall(model, raw, [Message(role="user", content="Hi")], False, None)


def test_output_tool_beside_client_tools_lets_the_model_choose_any() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    req = build_request(_call({"tools": tools, "response_format": {"type": "json_object"}}))
    assert [t["name"] for t in req["tools"]] == ["lookup", "json_output"]
    assert req["tool_choice"] == {"type": "any"}


def test_client_tool_calls_stay_tool_calls_beside_the_output_tool() -> None:
    body = (b'{"id":"msg_1","content":[{"type":"tool_use","id":"t1","name":"lookup",'
            b'"input":{"q":1}}],"stop_reason":"tool_use","usage":{"input_tokens":1,'
            b'"output_tokens":1}}')
    done = to_completion(body, "claude-x", structured="json_output")
    assert done.finish_reason == "tool_calls"
    tr = StreamTranslator("claude-x", structured="json_output")
    out = tr.feed(None, b'{"type":"content_block_start","index":0,"content_block":'
                        b'{"type":"tool_use","id":"t","name":"json_output","input":{}}}')
    assert out == []
    [chunk] = tr.feed(None, b'{"type":"content_block_delta","index":0,"delta":'
                            b'{"type":"input_json_delta","partial_json":"{\\"a\\""}}')
    assert b'"content":"{\\"a\\""' in chunk
