"""The Redis limits while Redis cannot be reached: count in-process, then hand back.

On the first failed call (`failed`) the limits degrade (unless `limits.fail_closed`, which
refuses requests meanwhile): new requests are admitted by an in-process `MemoryLimits`
floored at the last values Redis reported, settles of requests Redis admitted are queued,
leases are taken out of use and their rests queued, and a background task probes Redis
every `RECOVER_S`. When Redis answers again the spend counted meanwhile is pushed and the
queues replayed, before Redis is used again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final

from ..config import LimitsConfig
from ..errors import ServiceUnavailable
from ..principal import Principal
from .admission import Admission, reservation_id
from .durable import SpendSource
from .leases import Lease, Leases
from .memory import MemoryLimits
from .redis_counters import REDIS_FAILURES, RedisCounters
from .tasks import TaskSet

log = logging.getLogger("proxy.limits")

RECOVER_S: Final = 0.25  # how often a degraded worker looks for Redis again


class _OutageSource(SpendSource):
    """Floors for the in-process stand-in: what Redis last said, settled + reserved."""

    def __init__(self, counters: RedisCounters) -> None:
        super().__init__(counters.source.store, counters.source.ledger)
        self._counters = counters

    async def base(self, key_id: str, period: str) -> int:
        in_use = self._counters.in_use(key_id, period)
        if in_use is not None:
            return in_use
        return await super().base(key_id, period)


class Outage:
    """Degrading to the in-process stand-in, and handing its spend back to Redis."""

    def __init__(
        self,
        config: LimitsConfig,
        counters: RedisCounters,
        leases: Leases,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._counters = counters
        self._leases = leases
        self._clock = clock
        self.active = False  # for metrics: counting in-process, Redis unreachable
        self._fallback: MemoryLimits | None = None
        # Spend counted in-process, taken from the stand-in and not yet on Redis: (key,
        # period, amount, push id). A push keeps its id until Redis answered it, so one
        # whose reply was lost is replayed under the same mark and added once.
        self._pushes: list[tuple[str, str, int, str]] = []
        self._pending: list[tuple[Admission, int, int]] = []  # settles for Redis to replay
        self._returns: list[Lease] = []  # leases' rests for Redis to take back, likewise
        self._tasks = TaskSet()
        self._recovering = TaskSet()

    # --- while Redis is away ------------------------------------------------------------

    async def admit(self, principal: Principal, worst: int, est_tokens: int) -> Admission:
        if self._config.fail_closed:
            raise ServiceUnavailable(
                "Spend limits cannot be checked right now (Redis is unreachable); "
                "this gateway is configured to refuse requests meanwhile.",
                code="limits_unavailable", headers={"retry-after": "1"},
            )
        admission = await self._stand_in().admit(principal, "", worst, est_tokens)
        admission.local = True
        return admission

    def settle(self, admission: Admission, cost: int, tokens: int) -> None:
        """Redis is away: count in-process, or queue the settle for Redis to replay."""
        if admission.local:
            self._stand_in().settle(admission, cost, tokens)
        else:
            self._pending.append((admission, cost, tokens))

    def queue_return(self, lease: Lease) -> None:
        """A lease's rest for Redis to take back when it answers again."""
        self._returns.append(lease)

    async def sweep(self, now: float | None) -> int:
        return await self._stand_in().sweep(now)

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        return await self._stand_in().spend(principals)

    def _stand_in(self) -> MemoryLimits:
        assert self._fallback is not None, "only while Redis is away"
        return self._fallback

    # --- going down and coming back -----------------------------------------------------

    def failed(self, error: BaseException) -> None:
        """A call Redis did not answer: count it, and degrade if not already."""
        self._counters.failed()
        if self.active:
            return
        self.active = True
        self._fallback = MemoryLimits(self._config, _OutageSource(self._counters), self._clock)
        self._returns += (lease for lease in self._leases.take_all() if lease.left)
        log.warning("limits: Redis unreachable (%s); counting spend and rate limits in-process "
                    "until it is back%s", type(error).__name__,
                    " (refusing requests: fail_closed)" if self._config.fail_closed else "")
        self._recovering.spawn(self._recover())
        self._tasks.spawn(self._counters.snapshots.flush())  # the database keeps what Redis said

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_S)
            try:
                # Connections to a restarted server are dead; drop them all, then probe.
                await self._counters.reconnect()
                pushed = await self.reconcile()
            except REDIS_FAILURES:
                self._counters.failed()
                continue
            log.info("limits: Redis is back; pushed the in-process spend of %d counters", pushed)
            return

    async def reconcile(self) -> int:
        """Push what was counted in-process, replay queued settles; then leave the outage."""
        fallback = self._stand_in()
        counters = self._counters
        pushed = 0
        while True:  # settles can land while we push: loop until nothing is left
            pushes = self._pushes + [(k, p, amount, reservation_id())
                                     for k, p, amount in fallback.take_local()]
            self._pushes = []
            pending, self._pending = self._pending, []
            returns, self._returns = self._returns, []
            if not pushes and not pending and not returns:
                break
            # Counters that only queued settles touch get their floor too, before the replay:
            # a replay onto a missing counter would rebuild it from the ledger, which
            # already holds those requests.
            known = {(k, p) for k, p, _, _ in pushes}
            for admission, _, _ in pending:
                if (admission.key_id, admission.period) not in known:
                    known.add((admission.key_id, admission.period))
                    pushes.append((admission.key_id, admission.period, 0, reservation_id()))
            try:  # each list shrinks as its items land: what is left on a failure is kept
                while pushes:
                    await counters.push(*pushes[0])
                    del pushes[0]
                    pushed += 1
                while pending:
                    await counters.settle(*pending[0])
                    del pending[0]
                while returns:
                    await counters.give_back(returns[0])
                    del returns[0]
            except BaseException:
                self._pushes[:0] = pushes
                self._pending[:0] = pending
                self._returns[:0] = returns
                raise
        self.active = False
        self._fallback = None
        return pushed

    # --- lifecycle ----------------------------------------------------------------------

    async def drain(self) -> None:
        await self._tasks.drain()

    async def stop(self) -> None:
        """Stop probing for Redis (closing)."""
        await self._recovering.cancel()

    async def close(self) -> None:
        """One last chance to hand the outage's spend over."""
        if not self.active:
            return
        try:
            await asyncio.wait_for(self.reconcile(), timeout=2.0)
        except (*REDIS_FAILURES, TimeoutError):
            log.warning("limits: closing while Redis is away; the ledger keeps the spend")
