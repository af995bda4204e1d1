"""Coarse deadlines: the request path's timeouts without an event-loop timer each.

Under uvloop a loop timer made and cancelled costs about 3 µs of CPU, and
`asyncio.timeout(delay)` cost a streamed request 6.8 µs: the timer, and in CPython 3.11
three `getpid()` system calls, which `current_task()` and `get_running_loop()` make to
find the running loop (three of the four a streamed request made: `loadtest/count.py
--tool strace`). Every request had one such timer for its upstream exchange
(`providers/h1/connection.py`) and every stream one more for its first byte
(`api/relay.py`). Here each deadline is an entry in a set (`Deadlines`: the gateway has one
for first-byte deadlines, each provider's connection pool one for its exchanges), scanned
every `RESOLUTION_S` by one timer while any is armed: arming and disarming cost a set
operation, and a deadline fires up to `RESOLUTION_S` late, which timeouts counted in
seconds do not notice.

`Deadline` is `asyncio.timeout` on it, with the same semantics: when the deadline passes
the task is cancelled, and the `CancelledError` that caused becomes `TimeoutError` at the
end of the block; a cancellation from elsewhere stays a `CancelledError`.
"""

from __future__ import annotations

import asyncio
from asyncio import current_task
from types import TracebackType
from typing import Final, Protocol

RESOLUTION_S: Final = 0.05


class Expiring(Protocol):
    """What can be armed: its loop time, and what to do once it has passed."""

    when: float

    def expire(self) -> None: ...


class Deadlines:
    """The armed deadlines of one event loop, and the timer that scans them."""

    __slots__ = ("_armed", "_handle", "_resolution_s", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float = RESOLUTION_S
                 ) -> None:
        self.loop = loop
        self._resolution_s = resolution_s
        self._armed: set[Expiring] = set()
        self._handle: asyncio.TimerHandle | None = None

    def after(self, delay: float) -> Deadline:
        """A deadline `delay` seconds after the block is entered."""
        return Deadline(self, delay)

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, item: Expiring) -> None:
        """`item.expire()` once the loop's time passes `item.when`, unless disarmed first."""
        self._armed.add(item)
        if self._handle is None:
            self._handle = self.loop.call_later(self._resolution_s, self._scan)

    def disarm(self, item: Expiring) -> None:
        self._armed.discard(item)

    def _scan(self) -> None:
        self._handle = None
        now = self.loop.time()
        due = [item for item in self._armed if item.when <= now]
        try:
            for item in due:
                self._armed.discard(item)
                item.expire()
        finally:  # one failing `expire` must not stop the others' deadlines
            if self._armed:
                self._handle = self.loop.call_later(self._resolution_s, self._scan)


class Deadline:
    """`asyncio.timeout(delay)` on `Deadlines` (`Deadlines.after`)."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_task", "delay", "when")

    def __init__(self, owner: Deadlines, delay: float) -> None:
        self._owner = owner
        self.delay = delay
        self._expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.when = 0.0  # loop time

    @property
    def expired(self) -> bool:
        return self._expired

    async def __aenter__(self) -> Deadline:
        owner = self._owner
        task = current_task(owner.loop)
        if task is None:
            raise RuntimeError("Deadline is used outside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = owner.loop.time() + self.delay
        owner.arm(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._owner.disarm(self)
        # As asyncio.Timeout: the cancellation this deadline asked for is taken back whatever
        # the block made of it, and becomes a timeout when it is what ended the block.
        if self._expired and self._task is not None:
            left = self._task.uncancel()
            if exc_type is asyncio.CancelledError and left <= self._cancelling:
                raise TimeoutError from exc

    def expire(self) -> None:
        """The deadline passed: cancel the task (once)."""
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()
