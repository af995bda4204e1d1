"""Spend and rate limits shared by every worker and instance through Redis: `RedisLimits`.

Each step is one Lua script (`scripts.py`) on one key's slot: admit (rate buckets +
quota check + reservation), settle (charge, release), sweep (abandoned reservations at
their estimate), rebuild (a missing counter from its durable floor). This module owns the
`Limits` interface on Redis: `admit` and `settle` on the request path, the sweeper,
`spend`, start and close. The parts it is built on:

- `redis_counters.py`: the connection and all the state, running a script, rebuilding a
  missing counter from its durable floor, charging a settle;
- `redis_outage.py`: Redis unreachable: count in-process, then hand the spend back;
- `redis_leases.py`: leases, so that most requests of a key with only a spend limit are
  admitted without a round trip (`leases.py`);
- `redis_failures.py`: which failures are outages and which are refusals. A refusal
  (`ScriptRefused`) is counted, logged once per script, and the call is given up (a
  settle) or the key's limit reported as uncheckable (an admission); Redis stays in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

from ..auth import Principal
from ..errors import ServiceUnavailable
from ..stats import DependencyErrors
from . import periods, scripts
from .admission import Admission
from .memory import reservation_id
from .redis_counters import REDIS_TIMEOUT_S
from .redis_failures import REDIS_FAILURES, ScriptRefused, is_refusal
from .redis_orphans import RedisOrphans
from .responses import bucket_state, quota_exceeded, rate_headers, rate_limited

# REDIS_TIMEOUT_S: for loadtest/bench_limits_transport.py, which imports it from here.
__all__ = ["REDIS_TIMEOUT_S", "RedisLimits"]

log = logging.getLogger("proxy.limits")

_BATCH: Final = 500


class RedisLimits(RedisOrphans):
    """The limits on Redis (`create_limits` picks it when `redis_url` is set)."""

    def stats(self) -> DependencyErrors:
        return DependencyErrors(self.redis_errors, self.database_errors)

    # --- admit --------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        request_id: str,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission:
        if self.degraded:
            return await self._admit_locally(principal, worst_case_nusd, estimated_tokens)
        now = self.clock()
        period = periods.period_id(principal.period, now)
        if (principal.limit_nusd is None and not principal.rpm and not principal.tpm
                and not self.config.fail_closed):
            # Nothing to enforce: no round trip (and loop turn) before the upstream call.
            # The settle still charges the spend: one without a reservation charges in full.
            # (Failing closed, every request must find Redis up: it still asks.)
            return Admission(principal.key_id, reservation_id(), 0, period=period)
        lease = 0
        if self._leasable(principal):
            drawn = self.leases.draw(principal.key_id, period, worst_case_nusd, now)
            if drawn is not None:
                return drawn  # reserved in Redis already, as part of the lease
            lease = self._ask_for_lease(principal.key_id, period, worst_case_nusd)
        rid = reservation_id()
        ttl_ms = int(self.config.reservation_ttl_s * 1000)
        now_ms = int(now * 1000)
        limit = principal.limit_nusd if principal.limit_nusd is not None else -1
        lid = reservation_id() if lease else ""
        args: list[str | int] = [rid, worst_case_nusd, limit, now_ms, now_ms + ttl_ms,
                principal.rpm or 0, principal.tpm or 0, estimated_tokens, 2 * ttl_ms, lease, lid]
        keys = scripts.keys_of(self.namespace, principal.key_id, period)
        why = "the database is unreachable"
        answered = False
        try:
            for _ in range(3):
                answered = False
                result: list[int] = await self._run("admit", self._admit, keys, args)
                answered = True
                if result[0] == 0 and result[6]:
                    return self._granted(principal.key_id, period, lid, result, worst_case_nusd)
                if result[0] != -1:
                    return self._admitted(principal, period, rid, estimated_tokens, result)
                if not await self._rebuild_counter(principal.key_id, period):
                    break
        except ScriptRefused:
            why = "the limits store refused the check"
        except REDIS_FAILURES as e:
            self._failed(e)
            return await self._admit_locally(principal, worst_case_nusd, estimated_tokens)
        finally:
            if lease:
                self.leases.asked(principal.key_id, period)
                if not answered:
                    self._grant_lost(principal.key_id, period, lid)
        if principal.limit_nusd is None:  # nothing to enforce: serve, the ledger still counts
            return Admission(principal.key_id, rid, 0, period=period)
        raise ServiceUnavailable(
            f"The key's spend limit could not be checked ({why}).",
            code="limits_unavailable", headers={"retry-after": "1"},
        )

    def _admitted(
        self, principal: Principal, period: str, rid: str, est_tokens: int, result: list[int]
    ) -> Admission:
        rpm, tpm = principal.rpm or 0, principal.tpm or 0
        code = result[0]
        if code == 2:
            states = (bucket_state(rpm, result[3] / 1000) if rpm else None,
                      bucket_state(tpm, result[4] / 1000) if tpm else None)
            which = "requests" if result[1] == 1 else "tokens"
            raise rate_limited(which, result[2] / 1000, rate_headers(*states))
        self._saw(principal.key_id, period, result[1], result[2])
        if code == 1:
            raise quota_exceeded(principal, period)
        headers = rate_headers(bucket_state(rpm, result[3] / 1000) if rpm else None,
                               bucket_state(tpm, result[4] / 1000) if tpm else None)
        return Admission(principal.key_id, rid, result[5], headers, period=period,
                         tokens=min(est_tokens, tpm), tpm=tpm)

    # --- settle -------------------------------------------------------------------------

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        if self.degraded:
            self._tasks.spawn(self._settle_one(admission, cost_nusd, tokens))
            return
        # The common case costs no task: one pipelined call and a callback (a task per
        # request was a tenth of the limits' CPU). A missing counter or a failure goes on
        # in `_settled`.
        future = self._pipeline.call(*self._settle_call(admission, cost_nusd, tokens))
        self._settling.add(future)
        future.add_done_callback(partial(self._settled, admission, cost_nusd, tokens))

    def _settled(self, admission: Admission, cost: int, tokens: int,
                 future: asyncio.Future[Any]) -> None:
        self._settling.discard(future)
        if future.cancelled():  # closing: the ledger still has the request
            return
        error = future.exception()
        if error is None:
            settled = int(future.result())
            if settled != -1:
                self._saw(admission.key_id, admission.period, settled)
            else:  # the counter is missing; the script changed nothing, so run it again
                self._retire(admission.key_id, admission.period)  # Redis lost it too
                self._tasks.spawn(self._settle_one(admission, cost, tokens))
        elif is_refusal(error):
            self._refused("the settle script", error)
            self._not_charged(admission, cost)
        elif isinstance(error, REDIS_FAILURES):
            self._failed(error)
            self._settle_elsewhere(admission, cost, tokens)
        else:
            log.error("limits: settle failed: %r", error)
            self._not_charged(admission, cost)

    async def _settle_one(self, admission: Admission, cost: int, tokens: int) -> None:
        if not self.degraded:
            try:
                await self._settle_remote(admission, cost, tokens)
                return
            except REDIS_FAILURES as e:
                self._failed(e)
        self._settle_elsewhere(admission, cost, tokens)

    # --- sweep, spend, lifecycle ----------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Charge abandoned reservations at their estimate; returns how many."""
        if self.degraded:
            assert self._fallback is not None
            return await self._fallback.sweep(now)
        now = self.clock() if now is None else now
        current = periods.period_id("monthly", now)
        spans = [periods.TOTAL, current, periods.previous(current) or current]
        targets = [(kid, p) for kid in {*self._key_ids(), *(k for k, _ in self.seen)}
                   for p in spans]
        swept = 0
        for i in range(0, len(targets), _BATCH):
            batch = targets[i:i + _BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for kid, p in batch:
                await self._sweep(keys=scripts.keys_of(self.namespace, kid, p)[:3],
                                  args=[int(now * 1000)], client=pipe)
            results = await pipe.execute(raise_on_error=False)
            for (kid, p), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    if not is_refusal(result):
                        raise result
                    self._refused("the sweep script", result)  # the other keys still sweep
                    continue
                n, settled = result
                if n:
                    swept += n
                    self._saw(kid, p, settled)
        return swept

    async def _sweeper(self) -> None:
        interval = self.config.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.degraded:
                continue
            try:
                # One sweeper per interval across all workers and instances.
                lock = f"{self.namespace}:lim:sweeper"
                if await self.redis.set(lock, "1", nx=True, px=max(1, int(interval * 900))):
                    await self.sweep()
            except REDIS_FAILURES as e:
                if is_refusal(e):
                    self._refused("the sweeper's lock", e)
                else:
                    self._failed(e)

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        now = self.clock()
        ids = [(p.key_id, periods.period_id(p.period, now)) for p in principals]
        seen = [self.seen.get(i, [None])[0] for i in ids]
        if self.degraded:
            assert self._fallback is not None
            local = await self._fallback.spend(principals)
            return [x if x is not None else s for x, s in zip(local, seen, strict=True)]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kid, p in ids:
                pipe.hget(self._counter(kid, p), "s")
            values: list[Any] = await pipe.execute()
        except REDIS_FAILURES as e:
            if is_refusal(e):
                self._refused("a read of spend counters", e)
            else:
                self._failed(e)
            return seen
        return [int(v) if v is not None else s for v, s in zip(values, seen, strict=True)]

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await job()

    async def drain(self) -> None:
        """Wait for the settles in flight (tests; shutdown)."""
        if self._settling:  # their callbacks run before `wait` returns, spawning any retry
            await asyncio.wait(set(self._settling), timeout=10)
        await self._tasks.drain()

    async def start(self) -> None:
        if self.source.store is not None:
            await self.source.store.start()
        self._loops.spawn(self._sweeper())
        self._loops.spawn(self._every(self.config.snapshot_interval_s, self.snapshots.flush))
        self._loops.spawn(self._expire_leases())

    async def close(self) -> None:
        await self._loops.cancel()
        self._give_back_all()
        await self.drain()
        if self.degraded:
            try:  # one last chance to hand the outage's spend over
                await asyncio.wait_for(self._reconcile(), timeout=2.0)
            except (*REDIS_FAILURES, TimeoutError):
                log.warning("limits: closing while Redis is away; the ledger keeps the spend")
        await self.snapshots.flush()
        await self._pipeline.close()
        await self.redis.aclose()
        if self.source.store is not None:
            await self.source.store.close()
