"""Incremental Server-Sent Events parsing: bytes as they arrive in, whole events out."""

from __future__ import annotations


class SSEParser:
    """Splits a byte stream into (event, data) pairs.

    Events end at a blank line. Multi-line `data:` fields are joined with a newline as
    the SSE spec says; comments (lines starting with ':') and `id:`/`retry:` are ignored.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[tuple[bytes | None, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((None, block[6:]))  # the common case: one data line
                continue
            parsed = _parse_block(block)
            if parsed is not None:
                events.append(parsed)
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished event (a stream that was cut mid-event)."""
        return self._buf


def _parse_block(block: bytes) -> tuple[bytes | None, bytes] | None:
    event: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    if not data and event is None:
        return None
    return event, b"\n".join(data)
