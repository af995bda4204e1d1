"""The one way tests wait for something that happens behind their back (the ledger's
write-behind, a settle after [DONE], a server noticing a close): poll a condition with a
deadline. Never a bare sleep as synchronization."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
INTERVAL_S = 0.02


async def poll(fetch: Callable[[], Awaitable[T]], until: Callable[[T], bool],
               timeout: float = 10.0) -> T:
    """`fetch()` again until `until` holds for what it returned, or `timeout` passes.

    Returns the last value either way: the caller asserts on it, so a timeout fails with
    what was seen rather than with "timed out".
    """
    deadline = time.monotonic() + timeout
    while True:
        got = await fetch()
        if until(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(INTERVAL_S)


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                   what: str = "condition not met in time") -> None:
    """Until `predicate()` (plain or awaitable) is true; AssertionError(`what`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(INTERVAL_S)
