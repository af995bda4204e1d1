"""Streaming chat: chunks piped as they come, usage handling, failures mid-stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import UPSTREAM_SECRET, fake_provider_toml
from fakes import Cut, ErrorEvent, FakeAnthropic, FakeOpenAI, Gate, Hang, Reply
from harness import ADMIN_KEY, Gateway, gateway_settings, running_gateway
from msgspec import Raw
from sse_reading import read_event

from proxy.api import relay
from proxy.api.relay import _pusher
from proxy.catalog import Usage
from proxy.compat.aiohttp_stream import EventStreamResponse

USER = [{"role": "user", "content": "Tell me a story"}]


def sse_events(raw: bytes) -> list[str]:
    return [block[6:] for block in raw.decode().split("\n\n") if block.startswith("data: ")]


async def stream(
    http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any]
) -> aiohttp.ClientResponse:
    return await http.post(
        gw.url + "/v1/chat/completions", json={"stream": True, **body}, headers=gw.headers
    )


async def test_each_event_reaches_the_client_before_the_next_is_sent(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    fake_openai.script(Reply(text="alpha beta gamma delta", gate=gate))
    request = asyncio.ensure_future(stream(http, gateway, {"model": "fake/gpt", "messages": USER}))
    # The gateway holds its response headers until the first event: release it first.
    assert await gate.release()
    resp = await request
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    buf = bytearray()
    seen: list[str] = []
    first = json.loads(await read_event(resp, buf))
    seen.append(first["choices"][0]["delta"].get("content") or "")
    # Now, one by one: the fake sends an event only when released, and the client must
    # see it before the next release. Nothing further is sent while we read.
    finished = False
    while not finished:
        assert await gate.release()
        chunk = json.loads(await asyncio.wait_for(read_event(resp, buf), timeout=5))
        seen.append(chunk["choices"][0]["delta"].get("content") or "")
        finished = chunk["choices"][0]["finish_reason"] is not None
    # The usage chunk (held back: not requested) and [DONE] remain.
    await gate.release_all()
    assert await read_event(resp, buf) == "[DONE]"
    assert "".join(seen) == "alpha beta gamma delta"


async def test_gateway_always_asks_upstream_for_usage(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER,
                                        "stream_options": {"include_usage": False}})
    await resp.read()
    assert fake_openai.last.json["stream_options"] == {"include_usage": True}
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    await resp.read()
    assert fake_openai.last.json["stream_options"] == {"include_usage": True}


async def test_stream_usage_chunk_hidden_when_not_requested(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all(c.get("usage") is None for c in chunks)


async def test_stream_usage_chunk_forwarded_with_cost_when_requested(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Reply(text="a b c", prompt_tokens=100, completion_tokens=3))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER,
                                        "stream_options": {"include_usage": True}})
    events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 100 and last["usage"]["completion_tokens"] == 3
    assert last["usage"]["cost"] == pytest.approx((100 * 0.15 + 3 * 0.60) / 1e6)


async def test_streamed_tool_call_deltas_come_back_intact(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    args = '{"city": "Paris", "unit": "celsius"}'
    fake_openai.script(Reply(tool_calls=[("get_weather", args)]))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER, "tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}]})
    chunks = [json.loads(e) for e in sse_events(await resp.read())[:-1]]
    pieces = []
    name = None
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            name = tc["function"].get("name") or name
            pieces.append(tc["function"].get("arguments", ""))
    assert name == "get_weather"
    assert "".join(pieces) == args
    assert len(pieces) > 2  # really streamed in pieces, not assembled by the gateway
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_sdk_streams_through_the_gateway(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    fake_openai.script(Reply(text="streaming works fine", prompt_tokens=5, completion_tokens=3))
    text = ""
    usage = None
    async with await client.chat.completions.create(  # type: ignore[call-overload]
        model="fake/gpt", messages=USER, stream=True,
        stream_options={"include_usage": True},
    ) as events:
        async for chunk in events:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
    assert text == "streaming works fine"
    assert usage is not None and usage.completion_tokens == 3
    await client.close()


async def test_a_stream_sent_in_one_write_reaches_the_client_event_for_event(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    paced = Reply(text="one two three four", prompt_tokens=9, completion_tokens=4)
    fake_openai.script(paced, Reply(text="one two three four", prompt_tokens=9,
                                    completion_tokens=4, burst=True))
    body = {"model": "fake/gpt", "messages": USER, "stream_options": {"include_usage": True}}
    paced_resp, burst_resp = [await stream(http, gateway, body) for _ in range(2)]
    slow, fast = sse_events(await paced_resp.read()), sse_events(await burst_resp.read())
    for resp in (paced_resp, burst_resp):
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["x-request-id"] and resp.headers["x-model"] == "fake/gpt"
    assert len(fast) == len(slow) == 1 + 4 + 1 + 1 + 1  # role, words, finish, usage, [DONE]
    for a, b in zip(slow[:-1], fast[:-1], strict=True):
        a_chunk, b_chunk = json.loads(a), json.loads(b)
        for per_response in ("id", "created"):  # two answers, maybe a second apart
            a_chunk.pop(per_response), b_chunk.pop(per_response)
        assert a_chunk == b_chunk
    assert json.loads(fast[-2])["usage"]["cost"] == pytest.approx((9 * 0.15 + 4 * 0.60) / 1e6)


async def test_error_event_inside_a_burst_follows_the_events_before_it(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(ErrorEvent(after_events=2, message="Overloaded now",
                                  reply=Reply(text="alpha beta gamma", burst=True)))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    events = sse_events(await resp.read())
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == ["", "alpha"]
    assert "Overloaded now" in json.loads(events[2])["error"]["message"]
    assert len(events) == 3


async def test_mid_stream_upstream_error_becomes_sse_error_event(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(ErrorEvent(after_events=2, message="The server had an error"))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 200
    events = sse_events(await resp.read())
    error = json.loads(events[-1])["error"]
    assert "The server had an error" in error["message"]
    assert set(error) == {"message", "type", "code", "param"}
    assert "[DONE]" not in events


async def test_cut_stream_ends_with_an_error_event(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Cut(after_events=3))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    events = sse_events(await resp.read())
    assert len(events) == 4
    error = json.loads(events[-1])["error"]
    assert "127.0.0.1" not in error["message"]


async def test_no_first_token_within_the_timeout_is_504(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.script(Hang(headers=True))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER})
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_client_disconnect_cancels_the_upstream_request(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    gate = Gate()
    fake_openai.script(Reply(text="one two three four five six", gate=gate))
    async with aiohttp.ClientSession() as own:
        request = asyncio.ensure_future(
            stream(own, gateway, {"model": "fake/gpt", "messages": USER}))
        assert await gate.release()
        resp = await request
        buf = bytearray()
        await read_event(resp, buf)
        resp.close()  # the client goes away mid-stream
    # The gateway notices on its next write and drops the upstream connection.
    for _ in range(5):
        if not await gate.release():
            break
    await asyncio.wait_for(fake_openai.disconnected.wait(), timeout=5)


class _Transport:
    """What `_pusher` uses of the client's transport, with the unsent bytes set by the test."""

    def __init__(self, owed: int, closing: bool = False) -> None:
        self.owed = owed
        self.closing = closing
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.owed


@pytest.mark.parametrize(
    ("owed", "goes_on"), [(0, True), (64 * 1024, True), (64 * 1024 + 1, False)]
)
def test_pushing_stops_once_the_client_owes_more_than_64_kib(owed: int, goes_on: bool) -> None:
    transport = _Transport(owed)
    request = SimpleNamespace(transport=transport)
    response = SimpleNamespace(headers={"Transfer-Encoding": "chunked"})
    keep: list[bytes] = []
    push = _pusher(request, response, keep)  # type: ignore[arg-type]
    assert push is not None
    assert push(b'data: {"a":1}\n\n') is goes_on
    assert transport.written == [b'f\r\ndata: {"a":1}\n\n\r\n']  # one chunk of chunked encoding
    assert keep == [b'{"a":1}']


def test_nothing_is_pushed_to_a_closing_client_or_without_chunked_encoding() -> None:
    chunked = SimpleNamespace(headers={"Transfer-Encoding": "chunked"})
    closing = _Transport(0, closing=True)
    push = _pusher(SimpleNamespace(transport=closing), chunked, None)  # type: ignore[arg-type]
    assert push is not None and push(b"data: {}\n\n") is False
    assert closing.written == []  # the next `response.write` reports the client gone
    plain = SimpleNamespace(headers={})
    assert _pusher(SimpleNamespace(transport=_Transport(0)), plain, None) is None  # type: ignore[arg-type]


async def test_an_event_stream_sends_its_headers_with_its_first_bytes_in_one_write() -> None:
    writes: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines  # asyncio's: patchable

        def counted_write(data: Any) -> None:
            writes.append(bytes(data))
            write(data)

        def counted_writelines(list_of_data: Any) -> None:
            parts = list(list_of_data)
            writes.append(b"".join(parts))
            writelines(parts)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign]
        response = EventStreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert writes == []  # the headers wait for the first event
        await response.write(b"data: 1\n\n")
        await response.write_eof(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        assert sse_events(await resp.read()) == ["1", "[DONE]"]
    assert len(writes) == 2
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")  # headers, then the chunk
    assert writes[1] == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


async def test_a_client_that_falls_behind_mid_stream_still_gets_every_event_in_order(
    gateway: Gateway, fake_openai: FakeOpenAI, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every client counts as behind after its first pushed write: the rest of each stream
    # goes through the task path, where each write waits for the client to drain.
    monkeypatch.setattr(relay, "_CLIENT_HIGH_WATER", -1)
    pieces = [f"{i:04d} " for i in range(300)]
    fake_openai.script(Reply(chunks=pieces, prompt_tokens=9, completion_tokens=300))
    resp = await stream(http, gateway, {"model": "fake/gpt", "messages": USER,
                                        "stream_options": {"include_usage": True}})
    events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(pieces)
    assert chunks[-1]["usage"]["completion_tokens"] == 300


async def test_a_stream_that_stalls_past_the_upstream_deadline_ends_with_an_error_event(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession,
) -> None:
    # The events so far are relayed from the connection's callback; the deadline's failure
    # must still reach the client as an error event, and the upstream connection be dropped.
    monkeypatch.setenv("FAKE_OPENAI_KEY", UPSTREAM_SECRET)
    toml = fake_provider_toml(fake_openai.base_url, fake_anthropic.base_url).replace(
        "timeout_s = 10", "timeout_s = 0.5", 1)
    gate = Gate()
    fake_openai.script(Reply(text="one two three four five six", gate=gate))
    async with running_gateway(gateway_settings(tmp_path, toml)) as gw:
        request = asyncio.ensure_future(stream(http, gw, {"model": "fake/gpt", "messages": USER}))
        for _ in range(3):  # the role chunk and two words; then the upstream goes quiet
            assert await gate.release()
        resp = await request
        events = sse_events(await asyncio.wait_for(resp.read(), timeout=5))
        await asyncio.wait_for(fake_openai.disconnected.wait(), timeout=5)
    words = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert words == ["", "one", " two"]
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"


async def test_an_http_1_0_client_gets_the_stream_unchunked_until_the_connection_closes(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    # No chunked encoding for HTTP/1.0: the relay does not push (that writes chunks), the
    # task path writes the events as they are and the end of the body is the connection's.
    fake_openai.script(Reply(text="one two three", interval_s=0.01))
    host, port = gateway.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "fake/gpt", "messages": USER, "stream": True}).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw\r\n"
                 b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                 % (len(body), body))
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # to EOF: the server closes
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    events = sse_events(rest)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text == "one two three"


@pytest.mark.parametrize("raw", [
    b'{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}',
    b'{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":4}}  \n',
    b'{ "total_tokens" : 32 , "prompt_tokens" : 12 , "completion_tokens" : 20 }',
    # Not for the splice: a count missing, a cost already there.
    b'{"prompt_tokens":12,"completion_tokens":20}',
    b'{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32,"cost":9.5}',
])
def test_the_cost_added_to_a_providers_usage_bytes_is_what_decoding_it_would_give(
    raw: bytes,
) -> None:
    """`usage_with_cost` adds `cost` to the provider's bytes when they already hold the three
    counts and no cost; the answer must be the one the decoded path gives, key for key."""
    usage = Usage(prompt_tokens=12, completion_tokens=20)
    fast = json.loads(bytes(relay.usage_with_cost(Raw(raw), usage, 1_500)))
    slow = json.loads(bytes(relay._usage_decoded_with_cost(Raw(raw), usage, 1_500)))
    assert fast == slow
    assert fast["cost"] == pytest.approx(1.5e-6)
