"""The OpenAI stream reader: the same events out and the same accounting, however the
upstream's bytes are cut into reads, on its fast path (a run of plain `data:` events decoded
at once and forwarded as it came) and its general path (comments, CRLF, errors)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from typing import Any, cast

import pytest

from proxy.catalog import Usage
from proxy.errors import UpstreamError
from proxy.providers.h1 import Response
from proxy.providers.openai import OpenAIStream
from proxy.providers.sse import frame


def chunk(delta: dict[str, Any] | None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "gpt-4o-mini", "choices": choices, "usage": usage},
                      separators=(",", ":")).encode()


TOOL_ARGS = '{"city":"Paris"}'
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
         "prompt_tokens_details": {"cached_tokens": 3}}
ANSWER = [
    chunk({"role": "assistant", "content": ""}),
    *(chunk({"content": word}) for word in ["Hello", " there", ", line\\nbreak", " \u00e9t\u00e9"]),
    chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": TOOL_ARGS}}]}),
    chunk({}, "tool_calls"),
]
USAGE_CHUNK = chunk(None, usage=USAGE)
TEXT_CHARS = len("Hello there, line\\nbreak \u00e9t\u00e9") + len(TOOL_ARGS)
BODY = frame([*ANSWER, USAGE_CHUNK, b"[DONE]"])


class Reads:
    """An upstream body as the HTTP client hands it over, one bytes object per read.

    Read boundaries are what these tests vary, and loopback TCP does not let a test
    choose them, so the reads come from a list instead of a socket. Like the real
    response, it is iterated or pushed (`push`: the rest handed to a receiver until it
    says stop), both from one position.
    """

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)
        self.released = False
        self.closed = False

    def __aiter__(self) -> Reads:
        return self

    async def __anext__(self) -> bytes:
        if not self._reads:
            raise StopAsyncIteration
        return self._reads.pop(0)

    async def push(self, receiver: Callable[[bytes], bool]) -> None:
        while self._reads:
            if not receiver(self._reads.pop(0)):
                return

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


# How the relay takes the stream after its first run: iterating ("pull"), pushed from the
# connection's callback ("push"), or pushed until the client falls behind, then iterated.
MODES = ["pull", "push", "push-then-pull"]


async def read_out(stream: OpenAIStream, mode: str, into: list[bytes]) -> None:
    """Everything the stream gives the client, in order, appended to `into` as it comes."""
    runs = aiter(stream)
    if mode != "pull":
        first = await anext(runs, None)
        if first is None:
            return
        into.append(first)

        def sink(events: bytes) -> bool:
            into.append(events)
            return mode == "push"

        await stream.push(sink)
    async for events in runs:
        into.append(events)


async def relay(reads: list[bytes], mode: str = "pull") -> tuple[OpenAIStream, bytes, Reads]:
    upstream = Reads(reads)
    stream = OpenAIStream("openai", cast(Response, upstream))
    out: list[bytes] = []
    await read_out(stream, mode, out)
    return stream, b"".join(out), upstream


def assert_accounted(stream: OpenAIStream) -> None:
    assert stream.usage == Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=3)
    assert stream.finish_reason == "tool_calls"
    assert stream.text_chars == TEXT_CHARS
    assert stream.usage_chunk is not None
    assert json.loads(bytes(stream.usage_chunk["usage"])) == USAGE


@pytest.mark.parametrize("mode", MODES)
async def test_whole_stream_in_one_read_passes_through_unchanged_but_the_usage_chunk(
    mode: str,
) -> None:
    stream, out, upstream = await relay([BODY], mode)
    assert out == frame(ANSWER)
    assert_accounted(stream)
    assert upstream.released and not upstream.closed  # [DONE] seen: the connection is reused
    assert stream.finished


@pytest.mark.parametrize("mode", MODES)
async def test_one_read_per_event(mode: str) -> None:
    ends = [i + 2 for i in range(len(BODY)) if BODY[i:i + 2] == b"\n\n"]
    stream, out, _ = await relay(cut(BODY, ends), mode)
    assert out == frame(ANSWER)
    assert_accounted(stream)


@pytest.mark.parametrize("mode", MODES)
async def test_every_single_cut_point_gives_the_same_events_and_accounting(mode: str) -> None:
    for point in range(1, len(BODY)):
        stream, out, _ = await relay(cut(BODY, [point]), mode)
        assert out == frame(ANSWER), point
        assert_accounted(stream)


@pytest.mark.parametrize("mode", MODES)
async def test_random_cuts_give_the_same_events_and_accounting(mode: str) -> None:
    rng = random.Random(7)
    for _ in range(200):
        points = rng.sample(range(1, len(BODY)), rng.randint(2, 12))
        stream, out, _ = await relay(cut(BODY, points), mode)
        assert out == frame(ANSWER)
        assert_accounted(stream)


@pytest.mark.parametrize("reads", ["one", "bytes"])
@pytest.mark.parametrize("mode", MODES)
async def test_comments_and_crlf_take_the_general_path_with_the_same_result(
    reads: str, mode: str
) -> None:
    body = (b": keep-alive\r\n\r\n"
            + BODY.replace(b"\n\n", b"\n\n: ping\n\n").replace(b"\n", b"\r\n"))
    reads_ = [body] if reads == "one" else cut(body, list(range(1, len(body))))
    stream, out, _ = await relay(reads_, mode)
    assert out == frame(ANSWER)
    assert_accounted(stream)


@pytest.mark.parametrize("mode", MODES)
async def test_usage_chunk_before_the_last_event_is_kept_aside_all_the_same(mode: str) -> None:
    body = frame([ANSWER[0], USAGE_CHUNK, *ANSWER[1:], b"[DONE]"])
    stream, out, _ = await relay([body], mode)
    assert out == frame(ANSWER)
    assert_accounted(stream)


@pytest.mark.parametrize("mode", MODES)
async def test_error_event_mid_read_forwards_what_came_before_then_raises(mode: str) -> None:
    error = b'{"error":{"message":"Overloaded","type":"server_error","code":null}}'
    reads = [frame(ANSWER[:1]), frame([*ANSWER[1:3], error, b"[DONE]"])]
    upstream = Reads(reads)
    stream = OpenAIStream("openai", cast(Response, upstream))
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        await read_out(stream, mode, got)
    assert b"".join(got) == frame(ANSWER[:3])
    assert "Overloaded" in e.value.message
    assert upstream.closed and not stream.finished  # an error ends it, whatever came after


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "bad",
    [b'{"choices":[}', b'{"choices":[]},{"choices":[]}', b'{"choices":"nope"}'],
    ids=["broken-json", "two-values-in-one-event", "wrong-type"],
)
async def test_malformed_event_is_an_upstream_error_after_the_good_ones(
    bad: bytes, mode: str
) -> None:
    reads = [frame(ANSWER[:1]), frame([ANSWER[1], bad, *ANSWER[2:], USAGE_CHUNK, b"[DONE]"])]
    upstream = Reads(reads)
    stream = OpenAIStream("openai", cast(Response, upstream))
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        await read_out(stream, mode, got)
    assert e.value.reason == "malformed"
    assert b"".join(got) == frame(ANSWER[:2])
    assert upstream.closed


@pytest.mark.parametrize("mode", MODES)
async def test_stream_without_done_or_finish_is_cut(mode: str) -> None:
    upstream = Reads([frame(ANSWER[:1]), frame(ANSWER[1:3])])
    stream = OpenAIStream("openai", cast(Response, upstream))
    with pytest.raises(UpstreamError) as e:
        await read_out(stream, mode, [])
    assert e.value.reason == "cut"
    assert upstream.closed and not upstream.released
    assert not stream.finished


@pytest.mark.parametrize("mode", MODES)
async def test_events_after_done_are_ignored(mode: str) -> None:
    stream, out, _ = await relay([BODY + frame([ANSWER[1]])], mode)
    assert out == frame(ANSWER)
    assert_accounted(stream)
