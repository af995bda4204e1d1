"""Reading the gateway's chat streams (Server-Sent Events) in tests: whole, event by event
as a gated fake upstream releases them, or through the openai SDK. One copy, for
test_chat_stream and the cloud provider tests (Azure, Bedrock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterable
from typing import Any

import aiohttp
import openai
from fakes import Gate
from harness import ADMIN_KEY, Gateway
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam


async def read_event(resp: aiohttp.ClientResponse, buf: bytearray) -> str:
    """Read until one whole SSE event is in hand; returns its data."""
    while b"\n\n" not in buf:
        chunk = await resp.content.readany()
        if not chunk:
            raise EOFError("the stream ended early")
        buf.extend(chunk)
    end = buf.index(b"\n\n")
    event = bytes(buf[:end]).decode()
    del buf[: end + 2]
    assert event.startswith("data: ")
    return event[6:]


async def next_chunk(resp: aiohttp.ClientResponse, buf: bytearray) -> dict[str, Any]:
    """The next event, a JSON chunk."""
    return dict(json.loads(await read_event(resp, buf)))


async def contents_released_one_by_one(
    request: Awaitable[aiohttp.ClientResponse], gate: Gate, count: int
) -> list[str]:
    """The response to `request` (its first event released already) opens with the
    assistant's role chunk; then release `count` events from the gated upstream one at a
    time, each read by the client (within 5 s) before the next is released. Returns their
    delta contents."""
    resp = await request
    buf = bytearray()
    assert (await next_chunk(resp, buf))["choices"][0]["delta"]["role"] == "assistant"
    seen = []
    for _ in range(count):
        assert await gate.release()
        chunk = await asyncio.wait_for(next_chunk(resp, buf), timeout=5)
        seen.append(chunk["choices"][0]["delta"]["content"])
    return seen


def json_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a whole stream (not [DONE])."""
    return [json.loads(b[6:]) for b in raw.decode().split("\n\n") if b.startswith("data: {")]


def streamed_text(chunks: Iterable[dict[str, Any]]) -> str:
    """The delta contents of the chunks that have choices, joined."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def sdk_stream(
    gw: Gateway, model: str, messages: list[ChatCompletionMessageParam]
) -> list[ChatCompletionChunk]:
    """Every chunk of a stream the openai SDK asks the gateway for, usage included."""
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True})
        return [c async for c in stream]


def sdk_text(chunks: Iterable[ChatCompletionChunk]) -> str:
    """The delta contents of the SDK's chunks that have choices, joined."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
