"""Auto-pipelining: the Lua script calls made in one event-loop iteration go to Redis in at
most two writes: the first at once, the rest gathered until the iteration ends.

Under load many requests admit and settle at once; one round trip per call cost about half
of a request's CPU in the benchmark's profile, and redis-py's pipelines most of the rest, so
the calls travel on one lean connection of our own (`resp.py`), opened on the first call and
again on the first call after it broke. The first call of an iteration is written as it is
made, so a lone request does not wait for company, nor for the loop to come round (under
1,000 streams that wait was most of the request's added time to first token). Each caller
still gets its own result or its own error, so the callers' outage and refusal handling is
unchanged.

TLS (`rediss://`) is not spoken by the lean connection: there the calls go through redis-py's
pipelines as before, and so do they when `lean=False` (the benchmark's baseline) or when
redis-py no longer says how it connects (`compat/redis.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.commands.core import AsyncScript

from ..compat.redis import connection_settings
from .resp import Address, Call, RespConnection, fail


class AutoPipeline:
    __slots__ = ("_address", "_client", "_connecting", "_connection", "_gathering", "_loop",
                 "_queue", "_sending", "_timeout_s", "_unsent")

    def __init__(self, client: redis.Redis, timeout_s: float, lean: bool = True) -> None:
        self._client = client
        settings = connection_settings(client) if lean else None  # None: not for redis-py's
        self._address = Address.of(*settings) if settings is not None else None
        self._timeout_s = timeout_s  # for connecting, and for each batch's replies
        self._queue: list[Call] = []  # this iteration's calls
        # The loop of the first call: `asyncio.get_running_loop()` asks `getpid()` (a system
        # call) each time, and this runs once or twice a request.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gathering = False
        self._connection: RespConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._unsent: list[Call] = []  # calls waiting for the connection to open
        self._sending: set[asyncio.Task[None]] = set()  # redis-py batches, until each finishes

    @property
    def lean(self) -> bool:
        """Whether the calls go on the lean connection (else through redis-py's pipelines)."""
        return self._address is not None

    def call(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((future, script, keys, args))
        if not self._gathering:  # the first of this iteration: out now, gather what follows
            self._gathering = True
            self._flush()
            loop.call_soon(self._flush_gathered)  # after everything else ready this iteration
        return future

    def _flush_gathered(self) -> None:
        self._gathering = False
        if self._queue:
            self._flush()

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if self._address is None:
            self._send_with_redis_py(batch)
            return
        connection = self._connection
        if connection is not None and not connection.closed:
            connection.send(batch)
            return
        self._unsent += batch
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect(self._address))

    async def _connect(self, address: Address) -> None:
        try:
            self._connection = await RespConnection.open(address, self._timeout_s)
        except Exception as e:  # noqa: BLE001 - Redis is away: every waiting caller sees it
            fail(self._unsent, e)
        except asyncio.CancelledError:  # closing
            fail(self._unsent, None)
            raise
        else:
            self._connection.send(self._unsent)
        finally:
            self._unsent = []
            self._connecting = None

    def disconnect(self) -> None:
        """Drop the connection (after a Redis restart): the next call opens a fresh one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        """Let the calls in flight finish (5 s at most), then close the connection."""
        waiting: set[asyncio.Future[Any]] = {c[0] for c in self._queue + self._unsent}
        waiting.update(self._sending)
        if self._connection is not None:
            waiting.update(self._connection.waiting())
        if waiting:
            await asyncio.wait(waiting, timeout=5)
        if self._connecting is not None:
            self._connecting.cancel()
        self.disconnect()

    # --- without the lean connection (TLS; the benchmark's baseline) ----------------------

    def _send_with_redis_py(self, batch: list[Call]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            if len(batch) == 1:
                _, script, keys, args = batch[0]
                assert script is not None
                results: list[Any] = [await script(keys=keys, args=args)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for _, script, keys, args in batch:
                    assert script is not None
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - the round trip failed: every caller sees it
            fail(batch, e)
            return
        except asyncio.CancelledError:
            fail(batch, None)
            raise
        for (future, *_), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

