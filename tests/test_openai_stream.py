"""The OpenAI stream reader: the same events out and the same accounting, however the
upstream's bytes are cut into reads, on its fast path (a run of plain `data:` events decoded
at once and forwarded as it came) and its general path (comments, CRLF, errors)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator
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
    choose them, so the reads come from a list instead of a socket.
    """

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self.released = False
        self.closed = False

    async def _each(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._each()

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


async def relay(reads: list[bytes]) -> tuple[OpenAIStream, bytes, Reads]:
    upstream = Reads(reads)
    stream = OpenAIStream("openai", cast(Response, upstream))
    out = b"".join([events async for events in stream])
    return stream, out, upstream


def assert_accounted(stream: OpenAIStream) -> None:
    assert stream.usage == Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=3)
    assert stream.finish_reason == "tool_calls"
    assert stream.text_chars == TEXT_CHARS
    assert stream.usage_chunk is not None
    assert json.loads(bytes(stream.usage_chunk["usage"])) == USAGE


async def test_whole_stream_in_one_read_passes_through_unchanged_but_the_usage_chunk() -> None:
    stream, out, upstream = await relay([BODY])
    assert out == frame(ANSWER)
    assert_accounted(stream)
    assert upstream.released and not upstream.closed  # [DONE] seen: the connection is reused
    assert stream.finished


async def test_one_read_per_event() -> None:
    stream, out, _ = await relay(cut(BODY, [i + 2 for i in range(len(BODY)) if BODY[i:i + 2] == b"\n\n"]))
    assert out == frame(ANSWER)
    assert_accounted(stream)


async def test_every_single_cut_point_gives_the_same_events_and_accounting() -> None:
    for point in range(1, len(BODY)):
        stream, out, _ = await relay(cut(BODY, [point]))
        assert out == frame(ANSWER), point
        assert_accounted(stream)


async def test_random_cuts_give_the_same_events_and_accounting() -> None:
    rng = random.Random(7)
    for _ in range(200):
        stream, out, _ = await relay(cut(BODY, rng.sample(range(1, len(BODY)), rng.randint(2, 12))))
        assert out == frame(ANSWER)
        assert_accounted(stream)


@pytest.mark.parametrize("reads", ["one", "bytes"])
async def test_comments_and_crlf_take_the_general_path_with_the_same_result(reads: str) -> None:
    body = b": keep-alive\r\n\r\n" + BODY.replace(b"\n\n", b"\n\n: ping\n\n").replace(b"\n", b"\r\n")
    stream, out, _ = await relay([body] if reads == "one" else cut(body, list(range(1, len(body)))))
    assert out == frame(ANSWER)
    assert_accounted(stream)


async def test_usage_chunk_before_the_last_event_is_kept_aside_all_the_same() -> None:
    body = frame([ANSWER[0], USAGE_CHUNK, *ANSWER[1:], b"[DONE]"])
    stream, out, _ = await relay([body])
    assert out == frame(ANSWER)
    assert_accounted(stream)


async def test_error_event_mid_read_forwards_what_came_before_then_raises() -> None:
    error = b'{"error":{"message":"Overloaded","type":"server_error","code":null}}'
    body = frame([*ANSWER[:3], error, b"[DONE]"])
    upstream = Reads([body])
    stream = OpenAIStream("openai", cast(Response, upstream))
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        async for events in stream:
            got.append(events)
    assert b"".join(got) == frame(ANSWER[:3])
    assert "Overloaded" in e.value.message
    assert upstream.closed and not stream.finished  # an error ends it, whatever came after


@pytest.mark.parametrize(
    "bad",
    [b'{"choices":[}', b'{"choices":[]},{"choices":[]}', b'{"choices":"nope"}'],
    ids=["broken-json", "two-values-in-one-event", "wrong-type"],
)
async def test_malformed_event_is_an_upstream_error_after_the_good_ones(bad: bytes) -> None:
    body = frame([*ANSWER[:2], bad, *ANSWER[2:], USAGE_CHUNK, b"[DONE]"])
    stream = OpenAIStream("openai", cast(Response, Reads([body])))
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        async for events in stream:
            got.append(events)
    assert e.value.reason == "malformed"
    assert b"".join(got) == frame(ANSWER[:2])


async def test_stream_without_done_or_finish_is_cut() -> None:
    upstream = Reads([frame(ANSWER[:3])])
    stream = OpenAIStream("openai", cast(Response, upstream))
    with pytest.raises(UpstreamError) as e:
        async for _ in stream:
            pass
    assert e.value.reason == "cut"
    assert upstream.closed and not upstream.released
    assert not stream.finished


async def test_events_after_done_are_ignored() -> None:
    stream, out, _ = await relay([BODY + frame([ANSWER[1]])])
    assert out == frame(ANSWER)
    assert_accounted(stream)
