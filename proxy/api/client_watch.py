"""Cancels a handler whose client has gone away, within `WATCH_INTERVAL_S`.

aiohttp does not cancel a handler when its client disconnects (`handler_cancellation` is
off by default, and stays off: turned on, it would cancel every handler anywhere, an
admission's Redis call or a key's database write included). So a non-stream request
would keep its upstream call, and the provider generating, until the upstream answered
(up to the provider's `timeout_s`), and a stream whose upstream is silent would notice
only at its next write. Instead every inference handler (the dialect pipeline,
embeddings) is watched from its admission to its end: one task looks at the watched
connections every
`WATCH_INTERVAL_S` and cancels the handler of each one that is closed. The handler then
cancels its upstream call (its connection is aborted, never pooled) and records 499.

Per request this costs a task lookup, a dict insert and a pop; the scan is a method call a watched
request four times a second.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

WATCH_INTERVAL_S: Final = 0.25


class ClientWatch:
    __slots__ = ("_interval", "_loop", "_watched")

    def __init__(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._interval = interval_s
        # Known once `run` starts: `current_task()` without it asks `getpid()` (a system call).
        self._loop: asyncio.AbstractEventLoop | None = None
        # ticket -> (handler task, its request): the request's transport is read by the scan,
        # not here (a property call a request; the scan reads it four times a second).
        self._watched: dict[int, tuple[asyncio.Task[Any], web.BaseRequest]] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, ticket: int, request: web.Request) -> None:
        """Watch the current task's client under `ticket` (unique among those watched) until
        `unwatch(ticket)`: keyed by the caller's ticket, the end needs no task lookup."""
        task = asyncio.current_task(self._loop)
        if task is not None:
            self._watched[ticket] = (task, request)

    def unwatch(self, ticket: int) -> None:
        self._watched.pop(ticket, None)

    def scan(self) -> int:
        """Cancel the handlers whose client is gone; returns how many."""
        gone = [ticket for ticket, (_, request) in self._watched.items()
                if _gone(request.transport)]
        for ticket in gone:
            task, _ = self._watched.pop(ticket)
            task.cancel("the client disconnected")
        return len(gone)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            self.scan()


def _gone(transport: asyncio.BaseTransport | None) -> bool:
    """None: the connection was lost (aiohttp drops its protocol's transport then)."""
    return transport is None or transport.is_closing()
