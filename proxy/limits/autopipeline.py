"""Auto-pipelining: the Lua script calls made in one event-loop iteration go to Redis as one
pipeline, one round trip.

Under load many requests admit and settle at once; one redis-py round trip per call cost
about half of a request's CPU in the benchmark's profile. A lone call (light traffic) is
sent as it is, so nothing waits for company. Each caller still gets its own result or its
own error, so the callers' outage and refusal handling is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.commands.core import AsyncScript

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    __slots__ = ("_client", "_queue", "_sending")

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._queue: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()  # references until each finishes

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)  # after everything else ready in this iteration
        self._queue.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, _ = batch[0]
                results: list[Any] = [await script(keys=keys, args=args)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - the round trip failed: every caller sees it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=5)
