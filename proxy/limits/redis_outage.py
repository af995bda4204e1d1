"""The Redis limits while Redis cannot be reached: count in-process, then hand back.

On the first failed call the limits degrade (unless `limits.fail_closed`, which refuses
requests meanwhile): new requests are admitted by an in-process `MemoryLimits` floored at
the last values Redis reported, settles of requests Redis admitted are queued, leases are
taken out of use and their rests queued, and a background task probes Redis every
`RECOVER_S`. When Redis answers again the spend counted meanwhile is pushed and the queues
replayed, before Redis is used again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ..auth import Principal
from ..errors import ServiceUnavailable
from . import periods
from .admission import Admission
from .durable import SpendSource
from .memory import MemoryLimits
from .redis_counters import RedisCounters
from .redis_failures import REDIS_FAILURES, ScriptRefused

log = logging.getLogger("proxy.limits")

RECOVER_S: Final = 0.25  # how often a degraded worker looks for Redis again


class _OutageSource(SpendSource):
    """Floors for the in-process stand-in: what Redis last said, settled + reserved."""

    def __init__(self, owner: RedisCounters) -> None:
        super().__init__(owner.source.store, owner.source.ledger)
        self._owner = owner

    async def base(self, key_id: str, period: str) -> int:
        seen = self._owner.seen.get((key_id, period))
        if seen is not None:
            return seen[0] + seen[1]
        return await super().base(key_id, period)


class RedisOutage(RedisCounters):
    """Degrading to the in-process stand-in, and handing its spend back to Redis."""

    # --- while Redis is away ------------------------------------------------------------

    async def _admit_locally(
        self, principal: Principal, worst: int, est_tokens: int
    ) -> Admission:
        if self.config.fail_closed:
            raise ServiceUnavailable(
                "Spend limits cannot be checked right now (Redis is unreachable); "
                "this gateway is configured to refuse requests meanwhile.",
                code="limits_unavailable", headers={"retry-after": "1"},
            )
        assert self._fallback is not None
        admission = await self._fallback.admit(principal, "", worst, est_tokens)
        admission.local = True
        return admission

    def _settle_elsewhere(self, admission: Admission, cost: int, tokens: int) -> None:
        """Redis is away: count in-process, or queue the settle for Redis to replay."""
        if admission.local:
            assert self._fallback is not None
            self._fallback.settle(admission, cost, tokens)
        else:
            self._pending.append((admission, cost, tokens))

    # --- going down and coming back -----------------------------------------------------

    def _failed(self, error: BaseException) -> None:
        self.redis_errors += 1
        if self.degraded:
            return
        self.degraded = True
        self._fallback = MemoryLimits(self.config, _OutageSource(self), self.clock)
        self._returns += (lease for lease in self.leases.take_all() if lease.left)
        log.warning("limits: Redis unreachable (%s); counting spend and rate limits in-process "
                    "until it is back%s", type(error).__name__,
                    " (refusing requests: fail_closed)" if self.config.fail_closed else "")
        self._loops.spawn(self._recover())
        self._tasks.spawn(self.snapshots.flush())  # the database keeps what Redis last said

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_S)
            try:
                # Connections to a restarted server are dead; drop them all, then probe.
                self._pipeline.disconnect()
                await self.redis.connection_pool.disconnect()
                await self.redis.ping()
                pushed = await self._reconcile()
            except REDIS_FAILURES:
                self.redis_errors += 1
                continue
            log.info("limits: Redis is back; pushed the in-process spend of %d counters", pushed)
            return

    async def _reconcile(self) -> int:
        """Push what was counted in-process, replay queued settles; then leave the outage."""
        fallback = self._fallback
        assert fallback is not None
        pushed = 0
        while True:  # settles can land while we push: loop until nothing is left
            local = fallback.take_local()
            pending, self._pending = self._pending, []
            returns, self._returns = self._returns, []
            if not local and not pending and not returns:
                break
            # Counters that only queued settles touch get their floor too, before the replay:
            # a replay onto a missing counter would rebuild it from the ledger, which
            # already holds those requests.
            known = {(k, p) for k, p, _ in local}
            for admission, _, _ in pending:
                if (admission.key_id, admission.period) not in known:
                    known.add((admission.key_id, admission.period))
                    local.append((admission.key_id, admission.period, 0))
            try:  # each list shrinks as its items land: what is left on a failure is kept
                while local:
                    await self._push(*local[0])
                    del local[0]
                    pushed += 1
                while pending:
                    await self._settle_remote(*pending[0])
                    del pending[0]
                while returns:
                    await self._give_back_remote(returns[0])
                    del returns[0]
            except BaseException:
                fallback.give_back(local)
                self._pending[:0] = pending
                self._returns[:0] = returns
                raise
        self.degraded = False
        self._fallback = None
        return pushed

    async def _push(self, key_id: str, period: str, delta: int) -> None:
        # The floor excludes the ledger: it already holds the requests counted in `delta`.
        floor = self.seen.get((key_id, period), [0, 0])[0]
        try:
            floor = max(floor, await self.source.snapshot(key_id, period))
        except Exception as e:  # noqa: BLE001
            self._load_errors += 1
            log.warning("limits: no spend snapshot for key %s (%s)", key_id, type(e).__name__)
        ttl = periods.counter_ttl_s(period, self.clock())
        try:
            settled = await self._run("rebuild", self._rebuild, self._counter_keys(key_id, period),
                                      [floor, delta, ttl])
        except ScriptRefused:
            log.error("limits: could not push %d nano-USD counted in-process to key %s; the "
                      "ledger still has it", delta, key_id)
            return
        self._saw(key_id, period, int(settled))
