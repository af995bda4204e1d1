"""Server-Sent Events: incremental parsing (bytes as they arrive in, whole events out) and
framing (chunk payloads out to the client as `data:` events)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..errors import UpstreamError

# Single bytes as ints: `int in bytes` is a byte lookup, while `b"\n" in bytes` first tries
# the argument as an int, and the TypeError it formats and drops costs ~2,000 instructions.
LF: Final = ord("\n")
CR: Final = ord("\r")
# The largest event an upstream may send (a Responses `response.completed` carries the whole
# answer, images included): past it the stream fails with a clear 502 instead of growing a
# buffer for as long as a broken or hostile provider keeps writing one line.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024


class SSEParser:
    """Splits a byte stream into (event, data) pairs.

    Events end at a blank line. Multi-line `data:` fields are joined with a newline as
    the SSE spec says; comments (lines starting with ':') and `id:`/`retry:` are ignored.
    `take` and `parse` are the two halves of `feed`, for a caller that first looks at the
    complete events as one run of bytes.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        return parse(self.take(chunk))

    def take(self, chunk: bytes) -> bytes:
        """The complete events so far (line ends normalized to `\\n`), b"" if none; the rest
        waits for the next chunk."""
        buf = self._buf + chunk if self._buf else chunk
        held = b""
        if CR in buf:
            if buf.endswith(b"\r"):  # maybe half a CRLF: its LF may open the next chunk
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n") + 2
        if end < 2:
            self._buf = buf + held
            if len(buf) > MAX_EVENT_BYTES:
                raise _too_large()
            return b""
        rest = self._buf = buf[end:] + held
        if len(rest) > MAX_EVENT_BYTES:
            raise _too_large()
        return buf[:end]

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished event (a stream that was cut mid-event)."""
        return self._buf


def _too_large() -> UpstreamError:
    return UpstreamError(
        f"The upstream provider sent a stream event larger than the gateway accepts "
        f"({MAX_EVENT_BYTES // (1024 * 1024)} MiB).",
        reason="too_large",
    )


def parse(complete: bytes) -> list[tuple[bytes | None, bytes]]:
    """The events of a run of complete SSE blocks (as `SSEParser.take` returns)."""
    events: list[tuple[bytes | None, bytes]] = []
    start = 0
    while True:
        end = complete.find(b"\n\n", start)
        if end < 0:
            return events
        block = complete[start:end]
        start = end + 2
        if block.startswith(b"data: ") and LF not in block:
            events.append((None, block[6:]))  # the common case: one data line
            continue
        parsed = _parse_block(block)
        if parsed is not None:
            events.append(parsed)


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


def frame(payloads: Iterable[bytes]) -> bytes:
    """`data:` events for chunk payloads, ready to write to the client in one write."""
    return b"".join(_frame_one(p) for p in payloads)


def _frame_one(payload: bytes) -> bytes:
    if LF in payload:  # one `data:` line per line, or the client reads a field per line
        payload = payload.replace(b"\n", b"\ndata: ")
    return b"data: " + payload + b"\n\n"


def payloads(framed: bytes) -> list[bytes]:
    """The payloads of complete events, such as `frame` writes (for the response cache)."""
    return [data for _event, data in parse(framed)]
