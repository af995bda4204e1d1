"""The keep-alive connections of one provider, at most `limit` open at once.

Idle connections are reused last in, first out (the warmest socket; the cold ones age out
after `keepalive` seconds); callers beyond the limit wait first in, first out, as with
aiohttp's connector `limit`. A connection goes back to the pool only when its response was
received whole and both sides keep it alive. The server may close an idle connection just
as a request goes out on it: that request is sent once more on a new connection.

A connection goes through the proxy that `Proxies` names for its host, if any (a CONNECT
tunnel for https). TLS verifies against `ca_file` when one is given, else the system's
store. A failed connection is logged with its reason (at most once per `_LOG_EVERY_S` per
upstream, with how many more failed since), never with a header or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections import deque
from typing import Final

from ...deadline import Deadlines
from ...stats import PoolStats
from .connection import Connection
from .endpoint import Endpoint, Key
from .errors import ConnectError, ConnectionLost, describe
from .proxy import Proxies, Proxy, open_tunnel
from .response import Response

log = logging.getLogger("proxy.upstream")

DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
_LOG_EVERY_S: Final = 10.0


class Pool:
    __slots__ = (
        "_closed",
        "_connect_timeout",
        "_conns",
        "_deadlines",
        "_failures",
        "_idle",
        "_keepalive",
        "_limit",
        "_loop",
        "_open",
        "_proxies",
        "_routes",
        "_ssl",
        "_sweeper",
        "_timeout",
        "_waiters",
        "max_body_bytes",
    )

    def __init__(
        self,
        limit: int,
        timeout: float,
        connect_timeout: float,
        keepalive: float = 30.0,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        ca_file: str | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)  # each exchange's, armed by its connection
        self._limit = limit
        self._timeout = timeout  # the whole call, from the start of `post` to the body's end
        self._connect_timeout = connect_timeout  # TCP and TLS
        self._keepalive = keepalive
        self._open = 0  # slots taken: connections open or being opened
        self._conns: set[Connection] = set()
        self._idle: dict[Key, deque[Connection]] = {}
        # Each waiter gets a connection handed back for its key, or None: a slot to connect in.
        self._waiters: deque[tuple[Key, asyncio.Future[Connection | None]]] = deque()
        self._ssl: ssl.SSLContext | None = None
        if ca_file is not None:  # a bad file fails the start, not the first request
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self.max_body_bytes = max_body_bytes  # a body read whole (`Response.read`)
        self._proxies = proxies
        self._routes: dict[Key, Proxy | None] = {}  # the proxy decision, once per upstream
        self._failures: dict[Key, tuple[float, int]] = {}  # last logged, failed since
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def stats(self) -> PoolStats:
        idle = sum(len(q) for q in self._idle.values())
        return PoolStats(self._open, idle, len(self._waiters), self._limit)

    async def post(self, endpoint: Endpoint, body: bytes) -> Response:
        """POST `body`; returns once the response's head arrived, its body unread."""
        if self._closed:
            raise ConnectError("the connection pool is closed")
        deadline = self._loop.time() + self._timeout
        if self._proxies is None:
            request = endpoint.encode(body)
        else:
            proxy = self._proxy_for(endpoint)
            if proxy is not None and not endpoint.tls:
                request = endpoint.encode_forwarded(body, proxy.authorization)
            else:
                request = endpoint.encode(body)
        conn = await self._acquire(endpoint, deadline, fresh=False)
        try:
            await conn.send(request, deadline)
        except ConnectionLost:
            if not conn.stale:
                raise
            conn = await self._acquire(endpoint, deadline, fresh=True)
            await conn.send(request, deadline)
        return Response(conn, self)

    def put(self, conn: Connection) -> None:
        """Take a connection back from a finished response: keep it for reuse, or close it.

        A response released before its body's end arrived (a stream's `[DONE]` is read
        before the chunked terminator) comes back here once the end is in.
        """
        if conn.can_finish and not self._closed:
            conn.finish_then(self.put)
            return
        if not conn.reusable or self._closed:
            conn.close()
            return
        conn.reused = True
        conn.recycle()
        while self._waiters:
            key, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if key == conn.key:
                waiter.set_result(conn)
            else:  # the first waiter wants another host: give it this connection's slot
                self._waiters.appendleft((key, waiter))
                conn.close()
            return
        conn.idle_since = now = self._loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(now + self._keepalive, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        waiters, self._waiters = self._waiters, deque()
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError("the connection pool is closed"))
        for conn in list(self._conns):
            conn.abort()
        await asyncio.sleep(0)  # let the transports finish closing before the loop may end

    # -- slots and connections -------------------------------------------------------------

    async def _acquire(self, endpoint: Endpoint, deadline: float, fresh: bool) -> Connection:
        if not fresh:
            conn = self._pop_idle(endpoint.key)
            if conn is not None:
                return conn
        if self._open >= self._limit:
            self._evict_idle()
        if self._open < self._limit and not self._waiters:
            self._open += 1
        else:
            handed = await self._wait_turn(endpoint.key, deadline)
            if handed is not None:
                return handed
        return await self._connect(endpoint, deadline)

    def _pop_idle(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        now = self._loop.time()
        while idle:
            conn = idle.pop()
            since, conn.idle_since = conn.idle_since, 0.0
            if now - since < self._keepalive and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    def _evict_idle(self) -> None:
        """At the limit with a new connection needed: close the longest-idle one, if any."""
        oldest = min((q[0] for q in self._idle.values() if q), key=lambda c: c.idle_since,
                     default=None)
        if oldest is not None:
            oldest.close()

    async def _wait_turn(self, key: Key, deadline: float) -> Connection | None:
        """Wait in line for a connection handed back, or for a free slot (None)."""
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over just as we gave up: pass it on
                if handed is None:
                    self._free_slot()
                else:
                    self.put(handed)
            raise

    def _proxy_for(self, endpoint: Endpoint) -> Proxy | None:
        key = endpoint.key
        try:
            return self._routes[key]
        except KeyError:
            assert self._proxies is not None
            proxy = self._routes[key] = self._proxies.for_host(
                endpoint.host, endpoint.port, endpoint.tls
            )
            return proxy

    async def _connect(self, endpoint: Endpoint, deadline: float) -> Connection:
        """Open a connection in a slot already taken; a failure frees the slot."""
        loop = self._loop
        key = endpoint.key
        proxy = self._proxy_for(endpoint) if self._proxies is not None else None
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout)):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(key, self._forget, self._deadlines),
                        endpoint.host,
                        endpoint.port,
                        ssl=self._tls() if endpoint.tls else None,
                        server_hostname=endpoint.host if endpoint.tls else None,
                    )
                elif endpoint.tls:
                    sock = await open_tunnel(proxy, endpoint.host, endpoint.port)
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(key, self._forget, self._deadlines),
                            sock=sock,
                            ssl=self._tls(),
                            server_hostname=endpoint.host,
                        )
                    except BaseException:
                        sock.close()
                        raise
                else:  # plain http through a forwarding proxy
                    _, conn = await loop.create_connection(
                        lambda: Connection(key, self._forget, self._deadlines), proxy.host,
                        proxy.port,
                    )
        except BaseException as e:
            self._free_slot()
            if isinstance(e, ConnectError):
                self._log_failure(endpoint, e.reason)
                raise
            if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                reason, kind = describe(e)
                self._log_failure(endpoint, reason)
                raise ConnectError(
                    f"could not connect to {endpoint.host}:{endpoint.port}: {reason}", reason, kind
                ) from e
            if isinstance(e, TimeoutError):
                self._log_failure(endpoint, "timed out while connecting")
            raise
        self._failures.pop(key, None)
        if conn.transport.is_closing():  # lost before it could be registered
            conn.abort()
            self._free_slot()
            raise ConnectionLost("the upstream closed the connection at once")
        self._conns.add(conn)
        return conn

    def _forget(self, conn: Connection) -> None:
        """A registered connection closed: off the idle list, and its slot freed."""
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if conn.idle_since:
            conn.idle_since = 0.0
            self._idle[conn.key].remove(conn)
        self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the first in line
                return
        self._open -= 1

    def _sweep(self) -> None:
        """Close connections idle for `keepalive` seconds; come back when the next one is due."""
        self._sweeper = None
        now = self._loop.time()
        due = math.inf
        for idle in list(self._idle.values()):
            while idle and now - idle[0].idle_since >= self._keepalive:
                idle[0].close()  # `_forget` takes it off the list
            if idle:
                due = min(due, idle[0].idle_since + self._keepalive)
        if due < math.inf:
            self._sweeper = self._loop.call_at(due, self._sweep)

    def _log_failure(self, endpoint: Endpoint, reason: str) -> None:
        """One warning per upstream per `_LOG_EVERY_S`, counting the ones in between:
        an outage must not flood the log with a line per request."""
        now = self._loop.time()
        last, since = self._failures.get(endpoint.key, (-math.inf, 0))
        if now - last < _LOG_EVERY_S:
            self._failures[endpoint.key] = (last, since + 1)
            return
        self._failures[endpoint.key] = (now, 0)
        more = f" ({since} more failed since the last report)" if since else ""
        log.warning(
            "upstream %s://%s:%d: connection failed: %s%s",
            "https" if endpoint.tls else "http", endpoint.host, endpoint.port, reason, more,
        )

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first use: loading the CA store takes milliseconds
            self._ssl = ssl.create_default_context()
        return self._ssl
