"""The HTTP edge: the listener, with deadlines for slow clients and a cap on connections.

aiohttp's server alone keeps a connection that sends nothing, drips its headers or its
body, or idles between requests, open for an hour; enough of them take every file
descriptor, and then the database pool and the ledger's spool fail too (`EMFILE`). Here,
per worker (settings `[edge]`, docs/operations.md):

- request headers must be complete `header_timeout_s` after the connection opens, or after
  the first byte of a keep-alive connection's next request: else 408 (nothing sent yet:
  just closed);
- the body must be complete `body_timeout_s` after the headers (the `edge` middleware in
  `app.py`, `read_body_in_time`): else 408;
- an idle keep-alive connection is closed after `keepalive_timeout_s` (aiohttp's own timer);
- past `max_connections` open connections a new one gets 503 and is closed at once; the
  default leaves half of the descriptors the limit allows after a reserve to the rest of
  the process (upstream connections, PostgreSQL, Redis, spool files).

The parts that need aiohttp's internals are fenced in `compat/aiohttp_edge.py`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Final

from aiohttp import web

from .compat.aiohttp_edge import (
    EDGE_SLOTS,
    ConnectionSlots,
    EdgeProtocolFactory,
    EdgeSite,
    check_aiohttp,
)
from .config import Settings
from .errors import ApiError, BodyTooLarge, InvalidRequest

log = logging.getLogger("proxy.edge")

RESERVED_FDS: Final = 256  # database and Redis pools, spool and log files, the listener
_UNLIMITED_FDS: Final = 1 << 20
BACKLOG: Final = 2048


class RequestTimeout(ApiError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


def fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_FDS if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int, fds: int) -> int:
    """Client connections allowed open at once: each may hold an upstream connection too,
    so half of what the reserve leaves."""
    auto = max(16, (fds - RESERVED_FDS) // 2)
    if configured == 0:
        return auto
    if configured > auto:
        log.warning("edge: max_connections = %d with a file-descriptor limit of %d: the "
                    "process may run out of descriptors before the cap (%d would not)",
                    configured, fds, auto)
    return configured


async def read_body_in_time(
    request: web.Request, timeout_s: float, request_id: str,
    render: Callable[[web.Request, ApiError], web.Response],
) -> web.StreamResponse | None:
    """Read a body that has not fully arrived with the headers, within `timeout_s`; the
    handler's own read then returns it from memory. Too late: the 408 (`render`: in the
    route's dialect), already sent on a connection now closed, so that neither aiohttp's
    lingering read (10 s) nor keep-alive leaves the slow client its connection."""
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()
        return None
    except TimeoutError:
        pass
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(
            f"The request body is larger than the limit of {request.client_max_size} bytes."
        ) from None
    except web.RequestPayloadError:
        # aiohttp's message quotes the offending bytes: name the problem, not the input.
        raise InvalidRequest("The request body is not valid HTTP/1.1 framing (chunked "
                             "encoding or length).", code="malformed_request") from None
    response = render(request, RequestTimeout(
        f"The request body did not arrive within {timeout_s:g} s.",
        headers={"x-request-id": request_id}))
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends the 408 before it closes
    return response


class EdgeServer:
    """The running listener of one worker: `start`, then `close` on shutdown."""

    def __init__(self, app: web.Application, settings: Settings, *, reuse_port: bool) -> None:
        check_aiohttp()
        self._settings = settings
        self._reuse_port = reuse_port
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False,
            shutdown_timeout=settings.shutdown_grace_s,
            keepalive_timeout=settings.edge.keepalive_timeout_s,
        )
        # The app's slots when it has them (the gateway's: its metrics export them).
        self.slots = app.get(EDGE_SLOTS) or ConnectionSlots(
            connection_cap(settings.edge.max_connections, fd_limit()))
        self._site: EdgeSite | None = None

    @property
    def port(self) -> int:
        return self._site.port if self._site is not None else self._settings.port

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        factory = EdgeProtocolFactory(server, self.slots, self._settings.edge.header_timeout_s,
                                      asyncio.get_running_loop())
        self._site = EdgeSite(
            self.runner, factory,
            self._settings.host if host is None else host,
            self._settings.port if port is None else port,
            reuse_port=self._reuse_port, backlog=BACKLOG,
        )
        await self._site.start()
        edge = self._settings.edge
        log.info("edge: at most %d open connections; headers within %g s, bodies within %g s, "
                 "idle keep-alive %g s", self.slots.limit, edge.header_timeout_s,
                 edge.body_timeout_s, edge.keepalive_timeout_s)

    async def close(self) -> None:
        await self.runner.cleanup()
