"""The fence: everything of the edge (`edge.py`) that reaches into aiohttp's server internals.

aiohttp's server protocol offers a keep-alive timeout and nothing else: no deadline for the
request headers, no cap on connections, and its parse-error path logs a traceback holding
the raw request bytes (an `Authorization` header included) and echoes them in the 400 body.
This module subclasses its `RequestHandler` to add the first two and replace the third.

Private aiohttp API used here, and nowhere else in the gateway:
- `RequestHandler._waiter` (set while the protocol waits for the next request's headers)
  and `RequestHandler._request_count` (requests whose headers were parsed);
- `Server._kwargs` (the handler arguments `web.Server` would create its handler with);
- `BaseSite._server` (the listening server `BaseSite.stop` closes), and the protocol's
  `_loop`.
Read in aiohttp 3.12.15, 3.13.2 and 3.14.5 (`FENCE.checked`); `check_aiohttp` (and the
gateway's start-up self-check, `proxy.compat.check`) refuses to start if the private names
are gone, and warns when the version was never checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final, cast

from aiohttp import web, web_protocol, web_runner, web_server
from aiohttp.web_request import BaseRequest

from ..stats import EdgeStats
from . import fence

log = logging.getLogger("proxy.edge")

_REFUSE_LOG_EVERY_S: Final = 10.0


def _json_error(status: int, message: str, type_: str, code: str, extra: str = "") -> bytes:
    body = (
        b'{"error":{"message":"' + message.encode() + b'","type":"' + type_.encode()
        + b'","code":"' + code.encode() + b'","param":null}}'
    )
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode() + body


# Written straight to the socket: no request object exists when these are sent.
HEADER_TIMEOUT_RESPONSE: Final = _json_error(
    408, "The request headers did not arrive in time.", "invalid_request_error",
    "request_timeout",
)
OVERLOADED_RESPONSE: Final = _json_error(
    503, "The gateway has too many open connections; try again.", "service_unavailable",
    "too_many_connections", extra="Retry-After: 1\r\n",
)


def _slots(cls: type) -> set[str]:
    return {name for c in cls.__mro__ for name in vars(c).get("__slots__", ())}


def probe() -> list[str]:
    """The private names this module uses that the installed aiohttp lacks."""
    missing = [f"RequestHandler.{name}" for name in ("_waiter", "_request_count", "_loop")
               if name not in _slots(web_protocol.RequestHandler)]
    if "_server" not in _slots(web_runner.BaseSite):
        missing.append("BaseSite._server")
    # An instance attribute: what `Server.__init__` sets is in the names its code uses.
    if "_kwargs" not in web_server.Server.__init__.__code__.co_names:
        missing.append("Server._kwargs")
    return missing


FENCE: Final = fence.Fence(
    name="aiohttp edge", module="proxy/compat/aiohttp_edge.py", distribution="aiohttp",
    checked=((3, 12), (3, 15)), probe=probe,
)


def check_aiohttp() -> None:
    """Fail at start, not on the first slow client, if aiohttp changed under the fence."""
    fence.run(FENCE)


class ConnectionSlots:
    """Counts the open client connections of one listener against the cap."""

    __slots__ = ("_last_log", "limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0  # for metrics
        self._last_log = -_REFUSE_LOG_EVERY_S

    def stats(self) -> EdgeStats:
        return EdgeStats(self.open, self.refused, self.limit)

    def note_refused(self, now: float) -> None:
        self.refused += 1
        if now - self._last_log >= _REFUSE_LOG_EVERY_S:  # one line per burst, not per client
            self._last_log = now
            log.warning("edge: %d connections open (the cap); refusing new ones with 503 "
                        "(%d so far)", self.open, self.refused)


EDGE_SLOTS: Final = web.AppKey("edge_slots", ConnectionSlots)


class EdgeHandler(web_protocol.RequestHandler):
    """aiohttp's protocol with a header deadline, a slot in the cap, and quiet parse errors.

    The header deadline runs from the connection's start, or from the first byte of a
    keep-alive connection's next request, until that request's headers are parsed. One
    timer handle per connection is reused (pushed later when it fires early), as aiohttp
    does for keep-alive, so a request arms no new timer.
    """

    __slots__ = (
        "_header_bytes",
        "_header_count",
        "_header_deadline",
        "_header_handle",
        "_header_timeout",
        "_holds_slot",
        "_slots",
    )

    def __init__(self, manager: web.Server, *, slots: ConnectionSlots, header_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._slots = slots
        self._header_timeout = header_timeout
        self._header_deadline = 0.0
        self._header_count = 0  # the deadline is for the request after this many
        self._header_bytes = False  # has that request sent anything yet
        self._header_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._slots.open += 1
        self._holds_slot = True
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self._slots.open -= 1
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        if count == self._header_count:
            self._header_bytes = True  # more of the request the deadline is for
        else:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                # Idle between requests (the keep-alive timer's time): these bytes begin the
                # next one. Bytes that arrive while a request is handled are its body.
                # (`_arm_header_deadline` inlined: this runs once a keep-alive request.)
                self._header_count = count
                self._header_bytes = True
                self._header_deadline = self._loop.time() + self._header_timeout
                if self._header_handle is None:
                    self._header_handle = self._loop.call_at(self._header_deadline,
                                                             self._on_deadline)
        # The base class by name, not `super()`: no proxy object a packet.
        web_protocol.RequestHandler.data_received(self, data)

    def _arm_header_deadline(self) -> None:
        """At the connection's start: the deadline of its first request's headers."""
        self._header_count = self._request_count
        self._header_bytes = False
        self._header_deadline = self._loop.time() + self._header_timeout
        if self._header_handle is None:
            self._header_handle = self._loop.call_at(self._header_deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._header_handle = None
        if self.transport is None or self._request_count != self._header_count:
            return  # closed, or the headers arrived in time
        if self._loop.time() < self._header_deadline:  # re-armed since: wait for the new one
            self._header_handle = self._loop.call_at(self._header_deadline, self._on_deadline)
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # a parsed request is queued: not waiting on the client
        if self._header_bytes:
            self.transport.write(HEADER_TIMEOUT_RESPONSE)
        self.force_close()  # the transport flushes the 408 before it closes

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """One log line and a body that names no input: aiohttp's own would log a traceback
        with the raw request (headers and all) and send its bytes back in the 400 body."""
        if status >= 500:
            # Not a client's bytes but a failure that escaped the gateway's own error
            # middleware (which logs its tracebacks itself): keep the traceback.
            log.error("edge: request failed outside the gateway's handler (status %d)",
                      status, exc_info=exc)
            type_, code, text = "api_error", "internal_error", "The gateway failed the request."
        else:
            peer = self.peername
            host = peer[0] if isinstance(peer, tuple) else "unknown"
            log.info("edge: refused a malformed HTTP request from %s: %s (status %d)",
                     host, type(exc).__name__ if exc is not None else "error", status)
            type_, code = "invalid_request_error", "malformed_request"
            text = "The request is not valid HTTP/1.1."
        response = web.json_response(
            {"error": {"message": text, "type": type_, "code": code, "param": None}},
            status=status,
        )
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection past the cap: a 503, then closed, without reading a byte."""

    def __init__(self, slots: ConnectionSlots, loop: asyncio.AbstractEventLoop) -> None:
        self._slots = slots
        self._loop = loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass
        self._slots.note_refused(self._loop.time())
        stream.write(OVERLOADED_RESPONSE)
        stream.close()


class EdgeProtocolFactory:
    """What the listener calls per accepted connection (in place of `web.Server`)."""

    def __init__(self, server: web.Server, slots: ConnectionSlots, header_timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._slots = slots
        self._header_timeout = header_timeout
        self._loop = loop
        self._kwargs: dict[str, Any] = dict(server._kwargs)  # fenced: see the module doc

    def __call__(self) -> asyncio.Protocol:
        if self._slots.open >= self._slots.limit:
            return _Refused(self._slots, self._loop)
        return EdgeHandler(self._server, loop=self._loop, slots=self._slots,
                           header_timeout=self._header_timeout, **self._kwargs)


class EdgeSite(web.BaseSite):
    """A TCP listener whose connections are made by `EdgeProtocolFactory`."""

    __slots__ = ("_factory_maker", "_host", "_listen_backlog", "_port", "_reuse_port", "port")

    def __init__(
        self,
        runner: web.BaseRunner,
        factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        reuse_port: bool,
        backlog: int,
    ) -> None:
        super().__init__(runner)
        self._factory_maker = factory
        self._listen_backlog = backlog
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self.port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._factory_maker, self._host, self._port, backlog=self._listen_backlog,
            reuse_port=self._reuse_port,
        )
        self._server = server  # fenced: BaseSite.stop closes it
        if server.sockets:
            self.port = server.sockets[0].getsockname()[1]

