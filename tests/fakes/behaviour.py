"""What a fake provider does with one request, and the server machinery that plays it.

A test queues behaviours with `FakeServer.script(...)`; each request takes the next one
(or `default` once the queue is empty). The provider modules only render their own wire
format: `FakeServer.serve` plays every behaviour the same way for both of them.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Self

import msgspec
from aiohttp import web

encode: Final = msgspec.json.encode

_WORDS: Final = re.compile(r"\s*\S+")
_ARG_PIECE: Final = 8  # characters per streamed piece of tool arguments


class Gate:
    """Holds a streamed reply's events until the test lets each one go.

    `await gate.release()` lets the next event out and returns True once it has been
    written to the socket, or False when the stream is over (ended, cut, or dropped).
    One gate serves one stream and one releasing caller at a time.
    """

    __slots__ = ("_closed", "_turns", "_written")

    def __init__(self) -> None:
        self._turns = asyncio.Semaphore(0)
        self._written: asyncio.Queue[bool] = asyncio.Queue()
        self._closed = False

    async def release(self) -> bool:
        if self._closed and self._written.empty():
            return False
        self._turns.release()
        return await self._written.get()

    async def release_all(self) -> int:
        """Let every remaining event out; returns how many were sent."""
        n = 0
        while await self.release():
            n += 1
        return n

    async def _wait_turn(self) -> None:
        await self._turns.acquire()

    def _sent(self) -> None:
        self._written.put_nowait(True)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._written.put_nowait(False)


@dataclass(frozen=True)
class Reply:
    """A normal answer; streamed when the request says `stream: true`, else one JSON body.

    `text=None` means "Hello from the fake." for a plain answer and no text when
    `tool_calls` (pairs of name and arguments JSON) are given. Token counts are reported
    verbatim in the provider's own fields (OpenAI's `prompt_tokens` includes cached
    tokens; Anthropic's `input_tokens` excludes cache reads and writes).
    `finish_reason=None` picks the provider's natural word ("stop"/"tool_calls",
    "end_turn"/"tool_use"). `omit_usage` models a server that reports no usage at all.
    `burst` sends a whole stream in one write, as a server with the answer in hand does.
    """

    text: str | None = None
    prompt_tokens: int = 12
    completion_tokens: int | None = None
    tool_calls: list[tuple[str, str]] | None = None
    finish_reason: str | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    chunks: list[str] | None = None
    interval_s: float = 0.0
    omit_usage: bool = False
    burst: bool = False
    gate: Gate | None = None

    @property
    def content(self) -> str:
        if self.text is not None:
            return self.text
        if self.chunks is not None:
            return "".join(self.chunks)
        return "" if self.tool_calls else "Hello from the fake."

    @property
    def tools(self) -> list[tuple[str, str]]:
        return self.tool_calls or []

    def pieces(self) -> list[str]:
        """The text as streamed: `chunks` if given, else word by word with its spaces."""
        if self.chunks is not None:
            return list(self.chunks)
        text = self.content
        words = _WORDS.findall(text)
        tail = text[len("".join(words)) :]
        if tail:
            words.append(tail)
        return words

    def output_tokens(self) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.content.split()) + sum(len(a.split()) for _, a in self.tools)


@dataclass(frozen=True)
class Fail:
    """An error answer in the provider's own error shape."""

    status: int = 500
    message: str = "boom"
    retry_after: float | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class Hang:
    """Accept the request and send nothing until the client goes away.

    With `headers=True` a stream's status line and headers go out first, so the
    silence is that of a first token that never comes.
    """

    headers: bool = False


@dataclass(frozen=True)
class Cut:
    """Stream `after_events` events of `reply`, then abort the TCP connection.

    On a non-streaming request, half of the JSON body goes out before the abort.
    """

    after_events: int = 2
    reply: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class ErrorEvent:
    """Stream `after_events` events of `reply`, then an in-stream error, then end.

    On a non-streaming request it answers as `Fail(500, message, error_type=error_type)`.
    """

    after_events: int = 2
    message: str = "Overloaded"
    error_type: str | None = None
    reply: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Reset:
    """Close the connection (with a TCP reset) without sending any response."""


Behaviour = Reply | Fail | Hang | Cut | ErrorEvent | Reset


@dataclass
class Recorded:
    """One request as received (header names lower-cased), and the monotonic time at
    which each stream event of the answer was written."""

    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    event_times: list[float] = field(default_factory=list)


def argument_pieces(arguments: str) -> list[str]:
    return [arguments[i : i + _ARG_PIECE] for i in range(0, len(arguments), _ARG_PIECE)]


Render = Callable[[Reply, Any, int], bytes]
"""(reply, request json, request number) -> a whole JSON body."""
Frames = Callable[[Reply, Any, int], list[bytes]]
"""(reply, request json, request number) -> every SSE event of a stream, in order."""


@dataclass
class _Exchange:
    request: web.Request
    rec: Recorded
    number: int
    aborted: bool = False


class FakeServer:
    """An aiohttp server on 127.0.0.1 and an ephemeral port that plays scripted behaviours.

    Subclasses add routes and render their provider's formats; see `serve`.
    """

    url_suffix: str = ""
    request_id_header: str = "x-request-id"
    sse_content_type: str = "text/event-stream; charset=utf-8"  # of every stream it sends

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[Recorded] = []
        self.default: Behaviour = Reply()
        self.disconnected = asyncio.Event()
        self._script: deque[Behaviour] = deque()
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- what the provider module supplies ------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        raise NotImplementedError

    def error_frame(self, event: ErrorEvent) -> bytes:
        raise NotImplementedError

    def error_headers(self, f: Fail) -> dict[str, str]:
        """The headers of an error answer besides the request id (a provider's own)."""
        return {} if f.retry_after is None else {"retry-after": f"{f.retry_after:g}"}

    # -- the test's side ------------------------------------------------------------

    @property
    def hits(self) -> int:
        return len(self.requests)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def script(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    async def start(self) -> None:
        self._stopping = False
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}{self.url_suffix}"

    async def stop(self) -> None:
        self._stopping = True
        pending = list(self._handlers)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- playing one request --------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        render: Render,
        frames: Frames | None = None,
        stream: bool | None = None,
    ) -> web.StreamResponse:
        """Record the request, take the next behaviour and play it.

        `frames` is None for endpoints that never stream; `stream` says whether this one
        streams where the URL or path, not the body's `stream: true`, says so (Gemini's, Bedrock's).
        """
        body = await request.read()
        try:
            decoded: Any = msgspec.json.decode(body)
        except msgspec.DecodeError:
            decoded = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = Recorded(request.path, headers, body, decoded)
        self.requests.append(rec)
        ex = _Exchange(request, rec, len(self.requests))
        if not isinstance(decoded, dict):
            return self._fail(Fail(400, "The request body is not valid JSON."))
        behaviour = self._script.popleft() if self._script else self.default
        if stream is None:
            stream = decoded.get("stream") is True
        stream = frames is not None and stream
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._play(ex, behaviour, stream, render, frames)
        except (asyncio.CancelledError, ConnectionResetError):
            # The handler is cancelled when the connection goes; that is the client
            # leaving, unless the fake cut it itself or is shutting down.
            if not (ex.aborted or self._stopping):
                self.disconnected.set()
            raise
        finally:
            self._handlers.discard(task)

    async def _play(
        self,
        ex: _Exchange,
        b: Behaviour,
        stream: bool,
        render: Render,
        frames: Frames | None,
    ) -> web.StreamResponse:
        req = ex.rec.json
        if isinstance(b, Fail):
            return self._fail(b)
        if isinstance(b, Reset):
            return await self._abort(ex, rst=True)
        if isinstance(b, Hang):
            if b.headers and stream:
                await self._open_stream(ex)
            return await _forever()
        if isinstance(b, ErrorEvent):
            if not stream or frames is None:
                return self._fail(Fail(500, b.message, error_type=b.error_type))
            events = frames(b.reply, req, ex.number)[: b.after_events]
            return await self._stream(ex, b.reply, [*events, self.error_frame(b)])
        if isinstance(b, Cut):
            if not stream or frames is None:
                return await self._cut_body(ex, render(b.reply, req, ex.number))
            events = frames(b.reply, req, ex.number)[: b.after_events]
            await self._stream(ex, b.reply, events, finish=False)
            return await self._abort(ex)
        if stream and frames is not None:
            return await self._stream(ex, b, frames(b, req, ex.number))
        return web.Response(
            body=render(b, req, ex.number),
            content_type="application/json",
            headers={self.request_id_header: request_id(ex.number)},
        )

    def _fail(self, f: Fail) -> web.Response:
        headers = {self.request_id_header: request_id(len(self.requests)), **self.error_headers(f)}
        return web.Response(
            status=f.status,
            body=self.error_body(f.status, f.message, f.error_type),
            content_type="application/json",
            headers=headers,
        )

    async def _open_stream(self, ex: _Exchange) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "content-type": self.sse_content_type,
                "cache-control": "no-cache",
                self.request_id_header: request_id(ex.number),
            }
        )
        await resp.prepare(ex.request)  # sends the status line and headers at once
        return resp

    async def _stream(
        self, ex: _Exchange, reply: Reply, events: list[bytes], finish: bool = True
    ) -> web.StreamResponse:
        resp = await self._open_stream(ex)
        gate = reply.gate
        if reply.burst:
            events = [b"".join(events)]
        try:
            for i, event in enumerate(events):
                if gate is not None:
                    await gate._wait_turn()
                elif i and reply.interval_s:
                    await asyncio.sleep(reply.interval_s)
                await resp.write(event)
                ex.rec.event_times.append(time.monotonic())
                if gate is not None:
                    gate._sent()
            if finish:
                await resp.write_eof()
        finally:
            if gate is not None:
                gate._close()
        return resp

    async def _cut_body(self, ex: _Exchange, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={self.request_id_header: request_id(ex.number)})
        resp.content_type = "application/json"
        resp.content_length = len(body)
        await resp.prepare(ex.request)
        await resp.write(body[: len(body) // 2])
        return await self._abort(ex)

    async def _abort(self, ex: _Exchange, rst: bool = False) -> web.StreamResponse:
        transport = ex.request.transport
        ex.aborted = True
        if transport is not None:
            if rst:
                _linger_zero(transport.get_extra_info("socket"))
            transport.abort()
        # The lost connection cancels this handler (handler_cancellation).
        return await _forever()


async def _forever() -> web.StreamResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _linger_zero(sock: Any) -> None:
    """Make the coming close send RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, OSError):
        pass


def request_id(number: int) -> str:
    return f"req_fake{number:06d}"
