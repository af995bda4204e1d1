"""The fake providers speak the real wire formats and play each behaviour as scripted."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fakes import (
    Cut,
    ErrorEvent,
    Fail,
    FakeAnthropic,
    FakeOpenAI,
    FakeServer,
    Gate,
    Hang,
    Reply,
    Reset,
    embedding_for,
)

CHUNK_KEYS = ["id", "object", "created", "model", "service_tier", "system_fingerprint", "choices"]
CHOICE_KEYS = ["index", "delta", "logprobs", "finish_reason"]
WEATHER = ("get_weather", '{"city": "Paris", "unit": "celsius"}')


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per event, as an SSE client sees them."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        out.append((name, "\n".join(data)))
    return out


def openai_chunks(raw: bytes) -> list[dict[str, Any]]:
    events = parse_sse(raw)
    assert events[-1] == (None, "[DONE]")
    return [json.loads(data) for _, data in events[:-1]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(params=["openai", "anthropic"])
async def chat(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeServer, str]]:
    """Either fake, with the URL of its chat endpoint."""
    if request.param == "openai":
        async with FakeOpenAI() as fake:
            yield fake, fake.base_url + "/chat/completions"
    else:
        async with FakeAnthropic() as fake:
            yield fake, fake.base_url + "/v1/messages"


def chat_body(stream: bool = False, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m-1",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, bytes]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.read()


# -- OpenAI chat -------------------------------------------------------------------


async def test_openai_stream_chunks_have_the_wire_fields(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    async with session.post(openai.base_url + "/chat/completions", json=chat_body(True)) as r:
        assert r.status == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = await r.read()
    chunks = openai_chunks(raw)
    for c in chunks:
        assert list(c) == CHUNK_KEYS  # no usage key at all when it was not asked for
        assert c["object"] == "chat.completion.chunk"
        assert (c["id"], c["created"], c["model"]) == (chunks[0]["id"], chunks[0]["created"], "m-1")
        assert [list(ch) for ch in c["choices"]] == [CHOICE_KEYS]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello from the fake."
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}


async def test_openai_stream_usage_chunk_only_when_requested(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    openai.script(Reply(prompt_tokens=30, cached_tokens=10, completion_tokens=7))
    url = openai.base_url + "/chat/completions"
    _, raw = await post(session, url, chat_body(True, include_usage=True))
    chunks = openai_chunks(raw)
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 30
    assert last["usage"]["completion_tokens"] == 7
    assert last["usage"]["total_tokens"] == 37
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == 10

    _, raw = await post(session, url, chat_body(True))
    assert all("usage" not in c and c["choices"] for c in openai_chunks(raw))


async def test_openai_stream_tool_call_deltas(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    openai.script(Reply(tool_calls=[WEATHER, ("noop", "{}")]))
    _, raw = await post(session, openai.base_url + "/chat/completions", chat_body(True))
    deltas = [c["choices"][0]["delta"] for c in openai_chunks(raw)]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    rest = [c for c in calls[1:] if c["index"] == 0]
    assert all(
        list(c) == ["index", "function"] and list(c["function"]) == ["arguments"] for c in rest
    )
    assert "".join(c["function"]["arguments"] for c in rest) == WEATHER[1]
    second = [c for c in calls if c["index"] == 1]
    assert second[0]["function"] == {"name": "noop", "arguments": ""}
    assert openai_chunks(raw)[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_completion_json(openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    openai.script(Reply(text="Hi there", prompt_tokens=5))
    status, raw = await post(session, openai.base_url + "/chat/completions", chat_body())
    body = json.loads(raw)
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "m-1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hi there",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 2


async def test_openai_completion_with_tool_calls(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    openai.script(Reply(tool_calls=[WEATHER]))
    _, raw = await post(session, openai.base_url + "/chat/completions", chat_body())
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": WEATHER[1]}


async def test_openai_omit_usage_drops_usage_everywhere(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    url = openai.base_url + "/chat/completions"
    openai.script(Reply(omit_usage=True), Reply(omit_usage=True))
    _, raw = await post(session, url, chat_body(True, include_usage=True))
    assert all("usage" not in c for c in openai_chunks(raw))
    _, raw = await post(session, url, chat_body())
    assert "usage" not in json.loads(raw)


async def test_openai_fail_uses_the_error_shape(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    openai.script(Fail(429, "slow down", retry_after=2), Fail())
    url = openai.base_url + "/chat/completions"
    async with session.post(url, json=chat_body()) as r:
        assert r.status == 429 and r.headers["retry-after"] == "2"
        assert await r.json() == {
            "error": {
                "message": "slow down",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    status, raw = await post(session, url, chat_body(True))
    assert status == 500
    assert json.loads(raw) == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": None}
    }


async def test_openai_error_event_ends_the_stream_without_done(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    openai.script(ErrorEvent(after_events=2, message="The server had an error"))
    status, raw = await post(session, openai.base_url + "/chat/completions", chat_body(True))
    events = parse_sse(raw)
    assert status == 200 and len(events) == 3
    assert json.loads(events[2][1]) == {
        "error": {
            "message": "The server had an error",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_invalid_json_gets_a_400(openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    async with session.post(openai.base_url + "/chat/completions", data=b"{nope") as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert openai.last.json is None and openai.last.body == b"{nope"


# -- OpenAI embeddings -------------------------------------------------------------


async def test_embeddings_are_deterministic_with_word_usage(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    url = openai.base_url + "/embeddings"
    body = {"model": "e-1", "input": ["one two", "three"]}
    _, raw = await post(session, url, body)
    first = json.loads(raw)
    assert first["object"] == "list" and first["model"] == "e-1"
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in first["data"])
    assert first["data"][0]["embedding"] == pytest.approx(embedding_for("one two"))
    _, again = await post(session, url, body)
    assert json.loads(again)["data"] == first["data"]


async def test_embeddings_base64_and_dimensions(
    openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    body = {"model": "e-1", "input": "hello", "encoding_format": "base64", "dimensions": 4}
    _, raw = await post(session, openai.base_url + "/embeddings", body)
    (item,) = json.loads(raw)["data"]
    vec = struct.unpack("<4f", base64.b64decode(item["embedding"]))
    assert vec == pytest.approx(embedding_for("hello", 4), rel=1e-6)


async def test_embeddings_obey_fail(openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    openai.script(Fail(503, "busy"))
    status, raw = await post(session, openai.base_url + "/embeddings", {"input": "x"})
    assert status == 503 and json.loads(raw)["error"]["message"] == "busy"


# -- Anthropic ---------------------------------------------------------------------


async def test_anthropic_stream_event_sequence(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(
        Reply(prompt_tokens=20, cached_tokens=3, cache_write_tokens=4, completion_tokens=9)
    )
    async with session.post(anthropic.base_url + "/v1/messages", json=chat_body(True)) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = await r.read()
    events = parse_sse(raw)
    datas = [json.loads(d) for _, d in events]
    assert all(name == data["type"] for (name, _), data in zip(events, datas, strict=True))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = datas[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == "m-1"
    assert start["usage"] == {
        "input_tokens": 20,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
        "output_tokens": 1,
    }
    assert datas[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert "".join(d["delta"]["text"] for d in datas[3:7]) == "Hello from the fake."
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in datas[3:7])
    assert datas[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }


async def test_anthropic_stream_tool_use_input_json_delta(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(Reply(text="Checking.", tool_calls=[WEATHER]))
    _, raw = await post(session, anthropic.base_url + "/v1/messages", chat_body(True))
    datas = [json.loads(d) for _, d in parse_sse(raw)]
    starts = [d for d in datas if d["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    tool = starts[1]["content_block"]
    assert tool["name"] == "get_weather" and tool["input"] == {}
    assert tool["id"].startswith("toolu_")
    pieces = [d["delta"] for d in datas if d["type"] == "content_block_delta" and d["index"] == 1]
    assert all(p["type"] == "input_json_delta" for p in pieces)
    assert json.loads("".join(p["partial_json"] for p in pieces)) == json.loads(WEATHER[1])
    assert datas[-2]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_message_json(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(Reply(text="Hi", tool_calls=[WEATHER], prompt_tokens=7, completion_tokens=11))
    async with session.post(anthropic.base_url + "/v1/messages", json=chat_body()) as r:
        assert r.headers["request-id"].startswith("req_")
        body = await r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0] == {"type": "text", "text": "Hi"}
    assert body["content"][1]["type"] == "tool_use"
    assert body["content"][1]["input"] == {"city": "Paris", "unit": "celsius"}
    assert body["stop_reason"] == "tool_use" and body["stop_sequence"] is None
    assert body["usage"] == {
        "input_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 11,
    }


async def test_anthropic_overloaded_is_529_with_error_shape(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(Fail(529, "Overloaded"), Fail(429, "slow", retry_after=3))
    url = anthropic.base_url + "/v1/messages"
    status, raw = await post(session, url, chat_body(True))
    body = json.loads(raw)
    assert status == 529
    assert body["type"] == "error"
    assert body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert body["request_id"].startswith("req_")
    async with session.post(url, json=chat_body()) as r:
        assert r.status == 429 and r.headers["retry-after"] == "3"
        assert (await r.json())["error"]["type"] == "rate_limit_error"


async def test_anthropic_error_event(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(ErrorEvent(after_events=3))
    _, raw = await post(session, anthropic.base_url + "/v1/messages", chat_body(True))
    events = parse_sse(raw)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping", "error"]
    assert json.loads(events[-1][1]) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_anthropic_omit_usage(
    anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    anthropic.script(Reply(omit_usage=True))
    _, raw = await post(session, anthropic.base_url + "/v1/messages", chat_body(True))
    datas = [json.loads(d) for _, d in parse_sse(raw)]
    assert "usage" not in datas[0]["message"] and "usage" not in datas[-2]


# -- behaviours shared by both fakes -------------------------------------------------


async def test_requests_are_recorded(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    await session.post(url, json=chat_body(), headers={"X-Api-Key": "k1"})
    rec = fake.last
    assert fake.hits == 1
    assert rec.path.endswith(("/chat/completions", "/v1/messages"))
    assert rec.headers["x-api-key"] == "k1"
    assert json.loads(rec.body) == rec.json == chat_body()


async def test_script_is_consumed_then_default(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.default = Fail(418, "teapot")
    fake.script(Reply(), Fail(500))
    statuses = [(await post(session, url, chat_body()))[0] for _ in range(4)]
    assert statuses == [200, 500, 418, 418]


async def test_cut_aborts_the_stream_after_n_events(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Cut(after_events=2))
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(url, json=chat_body(True)) as r:
            async for piece in r.content.iter_any():
                got += piece
    assert len(parse_sse(got)) == 2 and len(fake.last.event_times) == 2
    assert not fake.disconnected.is_set()


async def test_cut_truncates_a_plain_body(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Cut())
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(session, url, chat_body())


async def test_reset_closes_without_a_response(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Reset())
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        await post(session, url, chat_body(True))
    assert fake.hits == 1 and not fake.disconnected.is_set()


async def test_hang_sends_nothing_until_the_client_leaves(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Hang())
    with pytest.raises(TimeoutError):
        async with session.post(
            url, json=chat_body(True), timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass
    await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_hang_with_headers_sends_the_status_then_silence(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Hang(headers=True))
    async with session.post(url, json=chat_body(True)) as r:
        assert r.status == 200
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.content.readany(), 0.2)
    await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_client_dropping_a_stream_sets_disconnected(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Reply(interval_s=0.05, chunks=["a"] * 50))
    async with session.post(url, json=chat_body(True)) as r:
        await r.content.readany()
    await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert len(fake.last.event_times) < 50


async def test_gate_lets_one_event_out_per_release(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    gate = Gate()
    fake.script(Reply(gate=gate))
    async with session.post(url, json=chat_body(True)) as r:
        assert r.status == 200  # headers come before any event
        received = []
        while await gate.release():
            received.append(await asyncio.wait_for(r.content.readuntil(b"\n\n"), 2))
            try:  # nothing else is on its way (the end of the body may be)
                extra = await asyncio.wait_for(r.content.readany(), 0.02)
            except TimeoutError:
                extra = b""
            assert extra == b""
        assert await r.read() == b""
    assert len(received) == len(fake.last.event_times) > 5
    assert not await gate.release()


async def test_interval_paces_the_events(
    chat: tuple[FakeServer, str], session: aiohttp.ClientSession
) -> None:
    fake, url = chat
    fake.script(Reply(interval_s=0.03))
    await post(session, url, chat_body(True))
    times = fake.last.event_times
    assert all(b - a >= 0.025 for a, b in itertools.pairwise(times))


async def test_stop_ends_hanging_requests_promptly(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    await fake.start()
    fake.script(Hang())
    pending = asyncio.ensure_future(
        session.post(fake.base_url + "/chat/completions", json=chat_body())
    )
    while not fake.hits:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(fake.stop(), 2)
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert not fake.disconnected.is_set()
