"""A lean pipelined Redis connection for the limits' Lua scripts (RESP2, one socket).

Every request admits and settles through a Lua script, and under load redis-py's asyncio
machinery (pipeline objects, command packing, connection checkout, reply parsing) cost
50-60 µs of CPU per request, the gateway's largest single cost. This connection does only
what those calls need: `hiredis` packs each call and parses the replies, the calls of one
batch leave in one write, and since Redis answers in order, the replies are matched to their
callers first in, first out.

What the callers see is what redis-py gave them: an error reply becomes redis-py's exception
for it (READONLY is `ReadOnlyError`, ...; the map is in `compat/redis.py`), a script Redis
lost (restart, SCRIPT FLUSH) is sent again as EVAL without the caller noticing, a broken
connection is `ConnectionError`, and a reply late by more than the timeout is `TimeoutError`.
After a timeout the connection is closed, not reused: a late reply would otherwise be matched to
the wrong caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis import exceptions
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.commands.core import AsyncScript

from ..compat.redis import reply_error

# A caller's future, the script to run (None: `args` is a plain command), its keys and args.
Call = tuple["asyncio.Future[Any]", AsyncScript | None, Sequence[Any], Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Address:
    """Where and as whom to connect: the part of redis-py's connection kwargs we honour."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, connection_class: type, kwargs: Mapping[str, Any]) -> Address | None:
        """From a redis-py pool's URL parse; None for what we do not speak (TLS, credentials
        from a provider)."""
        if (connection_class not in (Connection, UnixDomainSocketConnection)
                or kwargs.get("credential_provider") is not None):
            return None
        return cls(host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)),
                   path=kwargs.get("path"), db=int(kwargs.get("db") or 0),
                   username=kwargs.get("username"), password=kwargs.get("password"))

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def pack(call: Call, as_eval: bool = False) -> bytes:
    """One call as RESP: EVALSHA (or, for a script Redis lost, EVAL), or a plain command."""
    _, script, keys, args = call
    if script is None:
        command: tuple[Any, ...] = tuple(args)
    elif as_eval:
        command = ("EVAL", script.script, len(keys), *keys, *args)
    else:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        packed: bytes = hiredis.pack_command(command)
    except TypeError as e:  # as redis-py reports a bool or None among the args
        raise exceptions.DataError(str(e)) from e
    return packed


def fail(calls: Iterable[Call], error: Exception | None) -> None:
    """Every caller still waiting gets `error` (None: cancelled)."""
    for future, *_ in calls:
        if future.done():
            continue
        if error is None:
            future.cancel()
        else:
            future.set_exception(error)


class _Batch:
    """Calls written together: how many replies are still due, and their one deadline."""

    __slots__ = ("deadline", "due")

    def __init__(self, due: int, deadline: asyncio.TimerHandle) -> None:
        self.due = due
        self.deadline = deadline


class RespConnection(asyncio.Protocol):
    """One socket to Redis carrying every call pipelined; replies matched in FIFO order."""

    __slots__ = ("_batches", "_closed", "_loop", "_pending", "_reader", "_timeout_s",
                 "_transport", "address")

    def __init__(self, address: Address, timeout_s: float) -> None:
        self.address = address
        self._closed = False
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(protocolError=exceptions.InvalidResponse,
                                      replyError=reply_error)
        self._pending: deque[Call] = deque()  # sent, reply not yet read; in send order
        self._batches: deque[_Batch] = deque()

    @classmethod
    async def open(cls, address: Address, timeout_s: float) -> RespConnection:
        """Connect, authenticate and select the database, all within `timeout_s`."""
        conn = cls(address, timeout_s)
        loop = conn._loop
        try:
            async with asyncio.timeout(timeout_s):
                if address.path:
                    await loop.create_unix_connection(lambda: conn, address.path)
                else:
                    await loop.create_connection(lambda: conn, address.host, address.port)
                await conn._handshake()
        except TimeoutError:
            conn.close()
            raise exceptions.TimeoutError(f"Timeout connecting to {address}") from None
        except OSError as e:
            conn.close()
            raise exceptions.ConnectionError(f"Error connecting to {address}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    async def _handshake(self) -> None:
        a = self.address
        commands: list[tuple[Any, ...]] = []
        if a.password:
            commands.append(("AUTH", a.username, a.password) if a.username
                            else ("AUTH", a.password))
        if a.db:
            commands.append(("SELECT", a.db))
        calls: list[Call] = [(self._loop.create_future(), None, (), c) for c in commands]
        self.send(calls)
        await asyncio.gather(*(future for future, *_ in calls))

    def send(self, calls: list[Call]) -> None:
        """Write the calls in one go; each caller's future gets its reply or error."""
        assert self._transport is not None and not self.closed
        chunks = []
        for call in calls:
            try:
                chunks.append(pack(call))
            except exceptions.DataError as e:  # that caller's arguments; the others go
                if not call[0].done():
                    call[0].set_exception(e)
                continue
            self._pending.append(call)
        self._write(chunks)

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        assert self._transport is not None
        try:
            self._transport.write(b"".join(chunks))
        except (OSError, RuntimeError) as e:  # uvloop's RuntimeError: the peer closed it
            self._fail(exceptions.ConnectionError(f"Error writing to {self.address}: {e}"))
            return
        # One timer per batch: a batch's replies come after every earlier batch's, so the
        # first timer to fire belongs to the oldest batch still waiting.
        deadline = self._loop.call_later(self._timeout_s, self._timed_out)
        self._batches.append(_Batch(len(chunks), deadline))

    @property
    def closed(self) -> bool:
        """No more sends: the next call needs a new connection."""
        return self._closed or self._transport is None or self._transport.is_closing()

    def waiting(self) -> Iterator[asyncio.Future[Any]]:
        """The futures of the calls sent and not answered yet."""
        return (future for future, *_ in self._pending)

    def close(self) -> None:
        """Close the socket; calls still waiting get `ConnectionError`."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        lost: list[bytes] = []  # EVALs for the scripts Redis no longer has
        try:
            while (reply := reader.gets()) is not False:
                call = self._pending.popleft()
                batch = self._batches[0]
                batch.due -= 1
                if not batch.due:
                    batch.deadline.cancel()
                    self._batches.popleft()
                future = call[0]
                if type(reply) is exceptions.NoScriptError and call[1] is not None:
                    lost.append(pack(call, as_eval=True))  # EVAL also caches it again
                    self._pending.append(call)
                elif future.done():  # its caller went away; the order still holds
                    continue
                elif isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except exceptions.InvalidResponse as e:  # the stream is garbled: nothing can be matched
            self._fail(e)
            return
        except IndexError:  # a reply nobody asked for: as garbled
            self._fail(exceptions.InvalidResponse(f"Unexpected reply from {self.address}"))
            return
        self._write(lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exceptions.ConnectionError(f"Connection to {self.address} lost"
                                              + (f": {exc}" if exc else "")))

    # --- failures ------------------------------------------------------------------------

    def _timed_out(self) -> None:
        self._fail(exceptions.TimeoutError(f"Timeout reading from {self.address}"))

    def _fail(self, error: Exception) -> None:
        """Every call still waiting gets `error`, and the connection is done for."""
        self.close()
        for batch in self._batches:
            batch.deadline.cancel()
        self._batches.clear()
        pending, self._pending = self._pending, deque()
        fail(pending, error)
