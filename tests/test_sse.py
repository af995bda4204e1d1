"""SSE parsing and framing: whole events out of arbitrary reads, and back to the wire."""

from __future__ import annotations

import pytest

from proxy.providers.sse import SSEParser, frame, parse, payloads

STREAM = (
    b'data: {"a":1}\n\n'
    b": keep-alive comment\n\n"
    b"event: message_start\ndata: {\"b\":2}\n\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\nretry: 100\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [
    (None, b'{"a":1}'),
    (b"message_start", b'{"b":2}'),
    (None, b"line one\nline two"),
    (None, b"[DONE]"),
]


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[tuple[bytes | None, bytes]]:
    parser = SSEParser()
    events: list[tuple[bytes | None, bytes]] = []
    last = 0
    for cut in [*cuts, len(data)]:
        events += parser.feed(data[last:cut])
        last = cut
    assert parser.pending == b""
    return events


def test_whole_stream_in_one_read() -> None:
    assert feed_in_pieces(STREAM, []) == EVENTS


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_every_split_point_gives_the_same_events(crlf: bool) -> None:
    data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    for cut in range(1, len(data)):
        assert feed_in_pieces(data, [cut]) == EVENTS, cut


def test_one_byte_at_a_time_with_crlf() -> None:
    data = STREAM.replace(b"\n", b"\r\n")
    assert feed_in_pieces(data, list(range(1, len(data)))) == EVENTS


def test_take_returns_only_complete_events_and_keeps_the_rest() -> None:
    parser = SSEParser()
    assert parser.take(b'data: {"a":1}\n\ndata: {"b"') == b'data: {"a":1}\n\n'
    assert parser.pending == b'data: {"b"'
    assert parser.take(b":2}\n") == b""
    assert parser.take(b"\n") == b'data: {"b":2}\n\n'
    assert parser.pending == b""


def test_a_cut_stream_leaves_its_unfinished_event_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n\ndata: {"half') == [(None, b'{"a":1}')]
    assert parser.pending == b'data: {"half'


def test_parse_of_complete_blocks() -> None:
    assert parse(b"") == []
    assert parse(b'data: {"a":1}\n\ndata: {"b":2}\n\n') == [(None, b'{"a":1}'), (None, b'{"b":2}')]


def test_frame_and_payloads_round_trip() -> None:
    chunks = [b'{"a":1}', b'{"b":2}', b"first\nsecond"]
    framed = frame(chunks)
    assert framed == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: first\ndata: second\n\n'
    assert payloads(framed) == chunks
    assert [data for _, data in parse(framed)] == chunks  # what a client's parser reads
    assert frame([]) == b""
    assert payloads(b"") == []
