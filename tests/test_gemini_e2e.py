"""Chat through the gateway to a fake Gemini API: plain and streamed, tools, structured
output, cuts, errors, usage and cost in the answer and the ledger, stream pacing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import Cut, ErrorEvent, Fail, Gate
from fakes.gemini_server import FakeGemini, GeminiReply
from harness import Gateway, gateway_settings, running_gateway
from ledger_support import wait_for

KEY = "AIzaSyFakeGatewayKey0123456789abcdefghij"
USER = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather?"}]
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
# USD per million tokens, as the toml below says.
IN, CACHED, OUT = 0.30, 0.03, 2.50


def gemini_toml(base_url: str) -> str:
    return f"""
[providers.gem]
protocol = "gemini"
base_url = "{base_url}"
api_key_env = "FAKE_GEMINI_KEY"
regions = ["global"]
first_byte_timeout_s = 5
timeout_s = 10

[[models]]
id = "gem/embed"
provider = "gem"
upstream = "gemini-embedding-001"
kind = "embedding"
input_price = 0.15
context_window = 2048

[[models]]
id = "gem/flash"
provider = "gem"
upstream = "gemini-2.5-flash"
input_price = {IN}
cached_input_price = {CACHED}
output_price = {OUT}
context_window = 1048576
max_output_tokens = 65536
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
async def gw(
    tmp_path: Path, fake: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_GEMINI_KEY", KEY)
    settings = gateway_settings(tmp_path, gemini_toml(fake.base_url))
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(http: aiohttp.ClientSession, gw: Gateway, **body: Any) -> aiohttp.ClientResponse:
    return await http.post(gw.url + "/v1/chat/completions", headers=gw.headers,
                           json={"model": "gem/flash", "messages": USER, **body})


def sse_data(raw: bytes) -> list[str]:
    return [b[6:] for b in raw.decode().split("\n\n") if b.startswith("data: ")]


async def ledger_rows(gw: Gateway, n: int) -> list[sqlite3.Row]:
    """The ledger's first `n` records, once written (the ledger writes behind)."""
    path = gw.settings.database_url.removeprefix("sqlite:///")
    rows: list[sqlite3.Row] = []

    def have() -> bool:
        nonlocal rows
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM usage_records ORDER BY ts").fetchall()
        return len(rows) >= n

    await wait_for(have)
    return rows


def cost(prompt: int, cached: int, out: int) -> float:
    return ((prompt - cached) * IN + cached * CACHED + out * OUT) / 1e6


async def test_completion_translates_both_ways_and_bills_thinking_as_output(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(GeminiReply(text="Sunny.", prompt_tokens=1200, completion_tokens=2,
                            cached_tokens=1000, thoughts_tokens=30, thought="Look outside."))
    resp = await chat(http, gw, max_tokens=256, temperature=0.2, stop=["END"])
    assert resp.status == 200, await resp.text()
    sent = fake.last
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Weather?"}]}]
    assert sent.json["generationConfig"] == {
        "maxOutputTokens": 256, "stopSequences": ["END"], "temperature": 0.2}
    body = await resp.json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Sunny." and message["reasoning_content"] == "Look outside."
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1200, 32)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1000
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 30
    assert usage["cost"] == pytest.approx(cost(1200, 1000, 32))
    [row] = await ledger_rows(gw, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        1200, 32, 1000)
    assert row["cost_nusd"] == round(cost(1200, 1000, 32) * 1e9)
    assert row["provider"] == "gem" and row["estimated"] == 0


async def test_tool_calls_and_results_round_trip(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(GeminiReply(tool_calls=[("get_weather", '{"city":"Paris"}'),
                                        ("get_weather", '{"city":"Lyon"}')]))
    history = [*USER,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Nice"}'}}]},
               {"role": "tool", "tool_call_id": "call_a", "content": '{"sky":"rain"}'}]
    resp = await http.post(gw.url + "/v1/chat/completions", headers=gw.headers, json={
        "model": "gem/flash", "messages": history, "tools": TOOLS, "tool_choice": "required"})
    assert resp.status == 200, await resp.text()
    sent = fake.last.json
    declaration = sent["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert declaration["parametersJsonSchema"] == TOOLS[0]["function"]["parameters"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Nice"}}}]}
    assert sent["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "rain"}}}]}
    body = await resp.json()
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"}, {"city": "Lyon"}]
    assert len({c["id"] for c in calls}) == 2
    assert body["choices"][0]["finish_reason"] == "tool_calls"


async def test_structured_output_passes_the_json_schema(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "object", "properties": {"temp": {"type": "number"}},
              "required": ["temp"], "additionalProperties": False}
    fake.script(GeminiReply(text='{"temp": 21}'))
    resp = await chat(http, gw, response_format={
        "type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}})
    assert resp.status == 200
    config = fake.last.json["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert json.loads((await resp.json())["choices"][0]["message"]["content"]) == {"temp": 21}
    fake.script(GeminiReply(text="{}"))
    assert (await chat(http, gw, response_format={"type": "json_object"})).status == 200
    assert fake.last.json["generationConfig"] == {"responseMimeType": "application/json"}


async def test_max_tokens_cut_is_finish_reason_length(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(GeminiReply(text="It is", completion_tokens=2, finish_reason="MAX_TOKENS"))
    body = await (await chat(http, gw, max_tokens=2)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    fake.script(GeminiReply(text="It is", completion_tokens=2, finish_reason="MAX_TOKENS"))
    raw = await (await chat(http, gw, max_tokens=2, stream=True)).read()
    finishes = [json.loads(d)["choices"][0]["finish_reason"] for d in sse_data(raw)[:-1]]
    assert finishes[-1] == "length"


async def test_safety_block_is_content_filter(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(GeminiReply(text="", finish_reason="SAFETY", completion_tokens=0))
    body = await (await chat(http, gw)).json()
    assert body["choices"][0]["finish_reason"] == "content_filter"


async def test_stream_is_translated_with_usage_and_tool_calls(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(GeminiReply(text="Checking now.", tool_calls=[("get_weather", '{"city":"Paris"}')],
                            prompt_tokens=50, completion_tokens=9, thoughts_tokens=20))
    resp = await chat(http, gw, tools=TOOLS, stream=True, stream_options={"include_usage": True})
    assert resp.status == 200
    assert fake.last.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    events = sse_data(await resp.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Checking now."
    calls = [tc for c in chunks if c["choices"]
             for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc["function"]["name"]) for tc in calls] == [(0, "get_weather")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (50, 29)
    assert usage["cost"] == pytest.approx(cost(50, 0, 29))
    [row] = await ledger_rows(gw, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"]) == (50, 29, 1)
    assert row["cost_nusd"] == round(cost(50, 0, 29) * 1e9)


async def test_each_stream_event_reaches_the_client_before_the_next_is_sent(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake.script(GeminiReply(text="alpha beta gamma delta", gate=gate))
    request = asyncio.ensure_future(chat(http, gw, stream=True))
    assert await gate.release()  # the gateway answers once the first event is in
    resp = await request
    assert resp.status == 200
    buf = bytearray()

    async def next_event() -> dict[str, Any]:
        while b"\n\n" not in buf:
            chunk = await asyncio.wait_for(resp.content.readany(), timeout=5)
            assert chunk, "the stream ended early"
            buf.extend(chunk)
        end = buf.index(b"\n\n")
        event = bytes(buf[:end]).decode()
        del buf[: end + 2]
        return json.loads(event.removeprefix("data: "))  # type: ignore[no-any-return]

    assert (await next_event())["choices"][0]["delta"]["role"] == "assistant"
    seen = [(await next_event())["choices"][0]["delta"]["content"]]
    # One upstream event per word: each must reach the client before the next is let go.
    for _ in range(3):
        assert await gate.release()
        seen.append((await next_event())["choices"][0]["delta"]["content"])
    assert "".join(seen) == "alpha beta gamma delta"
    assert (await next_event())["choices"][0]["finish_reason"] == "stop"
    await gate.release_all()
    assert bytes(buf) + await resp.content.read() == b"data: [DONE]\n\n"


@pytest.mark.parametrize(("fail", "status", "code"), [
    (Fail(403, "Permission denied on resource project."), 502, "provider_auth_failed"),
    (Fail(400, "API key not valid.", error_type="API_KEY_INVALID"), 502, "provider_auth_failed"),
    (Fail(400, "Invalid JSON payload received."), 400, "INVALID_ARGUMENT"),
    (Fail(503, "The model is overloaded."), 502, "upstream_error"),
])
async def test_provider_errors_are_mapped(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession,
    fail: Fail, status: int, code: str,
) -> None:
    fake.script(fail)
    resp = await chat(http, gw)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code
    assert KEY not in json.dumps(error)
    [row] = await ledger_rows(gw, 1)
    assert row["status"] == status and row["cost_nusd"] == 0


async def test_throttling_is_429_with_retry_after_from_retry_info(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.retry_delay = "17s"
    fake.script(Fail(429, "Resource has been exhausted (e.g. check quota)."))
    resp = await chat(http, gw)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "17"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_stream_error_event_after_first_chunk_ends_with_an_error_event(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(ErrorEvent(after_events=2, message="The model is overloaded.",
                           error_type="UNAVAILABLE", reply=GeminiReply(text="one two three")))
    resp = await chat(http, gw, stream=True)
    events = sse_data(await resp.read())
    assert json.loads(events[0])["choices"][0]["delta"]["content"] in ("", "one")
    assert "overloaded" in json.loads(events[-1])["error"]["message"]


async def test_cut_stream_is_an_error_not_a_finished_answer(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script(Cut(after_events=2, reply=GeminiReply(text="one two three four")))
    events = sse_data(await (await chat(http, gw, stream=True)).read())
    assert "error" in json.loads(events[-1])
    [row] = await ledger_rows(gw, 1)
    assert row["estimated"] == 1


async def test_embeddings_through_batch_embed_contents_with_estimated_usage(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    from fakes.openai_server import embedding_for

    resp = await http.post(gw.url + "/v1/embeddings", headers=gw.headers, json={
        "model": "gem/embed", "input": ["alpha", "beta gamma"], "dimensions": 4})
    assert resp.status == 200, await resp.text()
    sent = fake.last.json["requests"]
    assert sent[0] == {"model": "models/gemini-embedding-001",
                       "content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 4}
    body = await resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == pytest.approx(embedding_for("beta gamma", 4))
    [row] = await ledger_rows(gw, 1)
    assert row["estimated"] == 1 and row["prompt_tokens"] > 0  # Gemini reports no usage
    resp = await http.post(gw.url + "/v1/embeddings", headers=gw.headers, json={
        "model": "gem/embed", "input": [[1, 2, 3]]})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "input"


async def test_error_event_in_a_paced_stream_follows_the_text_before_it(
    gw: Gateway, fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake.script(ErrorEvent(after_events=2, message="The model is overloaded.",
                           error_type="UNAVAILABLE",
                           reply=GeminiReply(text="one two three", gate=gate)))
    request = asyncio.ensure_future(chat(http, gw, stream=True))
    assert await gate.release()
    resp = await request
    assert resp.status == 200
    await gate.release_all()  # the second word, then the error event, each its own read
    events = sse_data(await resp.read())
    texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert texts == ["", "one", " two"]
    error = json.loads(events[-1])["error"]
    assert "overloaded" in error["message"]
    [row] = await ledger_rows(gw, 1)
    assert row["status"] == 502 and row["estimated"] == 1
