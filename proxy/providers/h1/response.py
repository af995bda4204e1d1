"""An upstream response: status and headers at hand, the body read whole or piece by piece.

The callers end every response with `release()` (the connection goes back to the pool
once the whole response has arrived: at once, or when the rest of a body with a length or
chunked framing comes in, read off and dropped; else it is closed) or `close()`; any failure
or cancellation while reading closes it as well, so a connection is never reused
mid-response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, Self

from .connection import Connection
from .errors import H1Error


class Pool(Protocol):
    """What a response needs of the pool it came from (`pool.Pool`)."""

    @property
    def max_body_bytes(self) -> int:
        """The most a body read whole (`read`) may hold."""

    def put(self, conn: Connection) -> None:
        """Take the connection back once the response is over."""


class Response:
    __slots__ = ("_conn", "_headers", "_pool", "_raw", "status")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        self.status = conn.status
        self._raw = conn.raw_headers
        self._conn: Connection | None = conn
        self._pool = pool
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """Header names lower-cased (the last of repeated ones wins); built on first use."""
        if self._headers is None:
            self._headers = {
                name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self._raw
            }
        return self._headers

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; `ResponseTooLarge` past `limit` bytes (default: the pool's
        `max_body_bytes`)."""
        conn = self._open()
        try:
            return await conn.read_all(self._pool.max_body_bytes if limit is None else limit)
        except BaseException:
            self.close()
            raise

    def __aiter__(self) -> Self:
        """The body as it arrives: each piece is what one socket read brought."""
        return self

    async def __anext__(self) -> bytes:
        conn = self._open()
        try:
            chunk = await conn.next_chunk()
        except BaseException:
            self.close()
            raise
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def push(self, receiver: Callable[[bytes], bool]) -> None:
        """Body pieces handed to `receiver` as they arrive (see `Connection.push_body`);
        iterating again picks up where it stopped."""
        conn = self._open()
        try:
            await conn.push_body(receiver)
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _open(self) -> Connection:
        if self._conn is None:
            raise H1Error("the response was already released")
        return self._conn
