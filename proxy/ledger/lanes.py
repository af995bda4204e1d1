"""Lanes: the writer's concurrent transactions while the database is up.

One worker and one one-slot queue per connection of the sink. The writer puts each chunk
on the lane of its keys (see `Batches.partition`), so one key's records are never in
two transactions at once, and a full queue holds the writer back (it then lets the current
segment grow instead of cutting small batches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from .journal import Segment
from .record import UsageRecord

Chunk = tuple[Segment, Sequence[UsageRecord]]


class Lanes:
    def __init__(self, count: int, work: Callable[[Segment, Sequence[UsageRecord]],
                                                  Awaitable[None]]) -> None:
        self.count = count
        self._work = work
        self._queues: list[asyncio.Queue[Chunk]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._free = asyncio.Event()  # a lane took a chunk off its queue

    @property
    def running(self) -> bool:
        return bool(self._workers)

    def start(self) -> None:
        for i in range(self.count):
            queue: asyncio.Queue[Chunk] = asyncio.Queue(1)
            self._queues.append(queue)
            self._workers.append(asyncio.create_task(self._run(queue), name=f"ledger-lane-{i}"))

    def saturated(self) -> bool:
        """Some lane has a chunk waiting behind the one it is writing: a new batch would wait
        for it anyway (each batch has a chunk for every lane)."""
        return any(q.full() for q in self._queues)

    async def wait_free(self) -> None:
        self._free.clear()
        await self._free.wait()

    def wake(self) -> None:
        """Release a writer waiting in wait_free (the database went away: nothing to wait for)."""
        self._free.set()

    async def put(self, lane: int, segment: Segment, chunk: Sequence[UsageRecord]) -> None:
        await self._queues[lane].put((segment, chunk))

    async def settle(self) -> None:
        """Wait until no lane has a chunk queued or in flight."""
        for queue in self._queues:
            await queue.join()

    def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        self._workers.clear()
        self._queues.clear()

    async def _run(self, queue: asyncio.Queue[Chunk]) -> None:
        while True:
            segment, chunk = await queue.get()
            self._free.set()
            try:
                await self._work(segment, chunk)
            finally:
                queue.task_done()
