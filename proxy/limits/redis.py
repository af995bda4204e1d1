"""Spend and rate limits shared by every worker and instance through Redis: `RedisLimits`.

Each step is one Lua script (`scripts.py`) on one key's slot: admit (rate buckets +
quota check + reservation), settle (charge, release), sweep (abandoned reservations at
their estimate), rebuild (a missing counter from its durable floor). `RedisLimits` is the
one class to read: the `Limits` interface on Redis (`admit` and `settle` on the request
path, the sweeper, `spend`, a dead worker's orphans, start and close). It owns three
collaborators, each in its own module, handed to it when it is built (`from_url`):

- `counters` (`redis_counters.py`, `RedisCounters`): the only one that talks to Redis:
  runs the scripts on the lean pipelined connection (`autopipeline.py`, `resp.py`),
  rebuilds a missing counter from its durable floor, remembers what Redis last said, and
  tells an outage from a refusal (`ScriptRefused`: counted, logged once per script, the
  call given up; Redis stays in use);
- `outage` (`redis_outage.py`, `Outage`): Redis unreachable: count in-process, queue the
  settles and lease returns, then hand it all back when Redis answers;
- `leases` (`redis_leases.py`, `RedisLeases`): so that most requests of a key with only a
  spend limit are admitted without a round trip (`leases.py` is the bookkeeping).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from ..config import LimitsConfig
from ..errors import ServiceUnavailable
from ..stats import DependencyErrors
from ..principal import Principal
from . import periods
from .admission import Admission, reservation_id
from .durable import SnapshotWriter, SpendSource
from .leases import ALL, Lease, Leases
from .redis_counters import (
    REDIS_FAILURES,
    REDIS_TIMEOUT_S,
    RedisCounters,
    ScriptRefused,
    is_refusal,
    not_charged,
)
from .redis_leases import RedisLeases
from .redis_outage import Outage
from .responses import bucket_state, quota_exceeded, rate_headers, rate_limited
from .tasks import TaskSet, every

# REDIS_TIMEOUT_S: for loadtest/bench_limits_transport.py, which imports it from here.
__all__ = ["REDIS_TIMEOUT_S", "RedisLimits"]

log = logging.getLogger("proxy.limits")


class RedisLimits:
    """The limits on Redis (`create_limits` picks it when `redis_url` is set)."""

    def __init__(
        self,
        config: LimitsConfig,
        counters: RedisCounters,
        leases: RedisLeases,
        outage: Outage,
        key_ids: Callable[[], Iterable[str]],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.counters = counters
        self.leases = leases
        self.outage = outage
        self.clock = clock
        self._key_ids = key_ids  # the keys the sweeper looks at, with those seen here
        self._settling: set[asyncio.Future[Any]] = set()  # settle calls awaiting Redis
        self._tasks = TaskSet()  # settles that went on past their first call
        self._loops = TaskSet()

    @classmethod
    def from_url(
        cls,
        config: LimitsConfig,
        redis_url: str,
        namespace: str,
        source: SpendSource,
        key_ids: Callable[[], Iterable[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
    ) -> RedisLimits:
        """The limits on the Redis at `redis_url`, under `namespace` (connected lazily)."""
        counters = RedisCounters(redis_url, namespace, source, SnapshotWriter(source.store),
                                 clock, int(config.reservation_ttl_s * 1000))
        held = Leases()
        outage = Outage(config, counters, held, clock)
        return cls(config, counters, RedisLeases(config, held, counters, outage, clock),
                   outage, key_ids, clock)

    # --- what metrics read ----------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Counting in-process: Redis unreachable."""
        return self.outage.active

    @property
    def redis_errors(self) -> int:
        """Every failed Redis call."""
        return self.counters.redis_errors

    @property
    def refusals(self) -> int:
        """The failed calls that Redis refused (see `redis_counters.is_refusal`)."""
        return self.counters.refusals

    @property
    def database_errors(self) -> int:
        """Failed reads of a counter's durable floor, failed snapshot writes."""
        return self.counters.load_errors + self.counters.snapshots.errors

    @property
    def snapshots(self) -> SnapshotWriter:
        return self.counters.snapshots

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
        if self.outage.active:
            return await self.outage.admit(principal, worst_case_nusd, estimated_tokens)
        now = self.clock()
        period = periods.period_id(principal.period, now)
        if (principal.limit_nusd is None and not principal.rpm and not principal.tpm
                and not self.config.fail_closed):
            # Nothing to enforce: no round trip (and loop turn) before the upstream call.
            # The settle still charges the spend: one without a reservation charges in full.
            # (Failing closed, every request must find Redis up: it still asks.)
            return Admission(principal.key_id, reservation_id(), 0, period=period)
        leases = self.leases
        lease = 0
        if leases.leasable(principal):
            drawn = leases.draw(principal.key_id, period, worst_case_nusd, now)
            if drawn is not None:
                return drawn  # reserved in Redis already, as part of the lease
            lease = leases.ask(principal.key_id, period, worst_case_nusd)
        rid = reservation_id()
        ttl_ms = int(self.config.reservation_ttl_s * 1000)
        now_ms = int(now * 1000)
        limit = principal.limit_nusd if principal.limit_nusd is not None else -1
        lid = reservation_id() if lease else ""
        args: list[str | int] = [rid, worst_case_nusd, limit, now_ms, now_ms + ttl_ms,
                                 principal.rpm or 0, principal.tpm or 0, estimated_tokens,
                                 2 * ttl_ms, lease, lid]
        counters = self.counters
        keys = counters.keys(principal.key_id, period)
        why = "the database is unreachable"
        answered = False
        try:
            for _ in range(3):
                answered = False
                result: list[int] = await counters.run("admit", counters.admit_script, keys,
                                                       args)
                answered = True
                if result[0] == 0 and result[6]:
                    return leases.granted(principal.key_id, period, lid, rid, result,
                                          worst_case_nusd)
                if result[0] != -1:
                    return self._admitted(principal, period, rid, estimated_tokens, result)
                if not await counters.rebuild(principal.key_id, period):
                    break
        except ScriptRefused:
            why = "the limits store refused the check"
            answered = True  # with an error: it reserved nothing
        except REDIS_FAILURES as e:
            self.outage.failed(e)
            return await self.outage.admit(principal, worst_case_nusd, estimated_tokens)
        finally:
            if not answered:
                # No reply (a timeout, the client gone): Redis may have reserved the worst
                # case all the same, and nobody would settle it. Release it now, or when
                # Redis answers again, rather than have the sweeper charge it in full.
                self.settle(Admission(principal.key_id, rid, 0, period=period), 0, 0)
            if lease:
                leases.asked(principal.key_id, period)
                if not answered:
                    leases.grant_lost(principal.key_id, period, lid)
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
        self.counters.saw(principal.key_id, period, result[1], result[2])
        if code == 1:
            raise quota_exceeded(principal, period)
        headers = rate_headers(bucket_state(rpm, result[3] / 1000) if rpm else None,
                               bucket_state(tpm, result[4] / 1000) if tpm else None)
        return Admission(principal.key_id, rid, result[5], headers, period=period,
                         tokens=min(est_tokens, tpm), tpm=tpm)

    # --- settle -------------------------------------------------------------------------

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        if self.outage.active:
            self._tasks.spawn(self._settle_one(admission, cost_nusd, tokens))
            return
        # The common case costs no task: one pipelined call and a callback (a task per
        # request was a tenth of the limits' CPU). A missing counter or a failure goes on
        # in `_settled`.
        future = self.counters.send_settle(admission, cost_nusd, tokens)
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
                self.counters.saw(admission.key_id, admission.period, settled)
            else:  # the counter is missing; the script changed nothing, so run it again
                self.leases.retire(admission.key_id, admission.period)  # Redis lost it too
                self._tasks.spawn(self._settle_one(admission, cost, tokens))
        elif is_refusal(error):
            self.counters.refused("the settle script", error)
            not_charged(admission, cost)
        elif isinstance(error, REDIS_FAILURES):
            self.outage.failed(error)
            self.outage.settle(admission, cost, tokens)
        else:
            log.error("limits: settle failed: %r", error)
            not_charged(admission, cost)

    async def _settle_one(self, admission: Admission, cost: int, tokens: int) -> None:
        if not self.outage.active:
            try:
                await self.counters.settle(admission, cost, tokens)
                return
            except REDIS_FAILURES as e:
                self.outage.failed(e)
        self.outage.settle(admission, cost, tokens)

    # --- a dead worker's requests (`ledger/inflight_recovery.py`) -------------------------
    # Its admissions still hold their reservations (or their draws on its leases) in
    # Redis; without this they would wait for the sweeper, which charges each at its worst
    # case after `reservation_ttl_s`. Recovery settles each one at its estimated cost and
    # hands back what is left of the worker's leases: the counter then equals the ledger.

    async def settle_orphan(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        # Redis away: queued with the outage's settles and replayed when it is back.
        await self._settle_one(admission, cost_nusd, tokens)

    async def return_lease(self, key_id: str, period: str, lease_id: str) -> None:
        # ALL: whatever Redis still holds of it; its draws are settled by now. A lease already
        # handed back or swept is not there: the script does nothing.
        lease = Lease(lease_id, key_id, period, ALL, 0.0)
        if self.outage.active:
            self.outage.queue_return(lease)
            return
        try:
            await self.counters.give_back(lease)
        except REDIS_FAILURES as e:
            self.outage.failed(e)
            self.outage.queue_return(lease)

    # --- sweep, spend, lifecycle ----------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Charge abandoned reservations at their estimate; returns how many."""
        if self.outage.active:
            return await self.outage.sweep(now)
        return await self.counters.sweep(self._key_ids(), self.clock() if now is None else now)

    async def _sweeper(self) -> None:
        interval = self.config.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.outage.active:
                continue
            try:
                # One sweeper per interval across all workers and instances.
                if await self.counters.lock("sweeper", max(1, int(interval * 900))):
                    await self.sweep()
            except REDIS_FAILURES as e:
                if is_refusal(e):
                    self.counters.refused("the sweeper's lock", e)
                else:
                    self.outage.failed(e)

    def expire_leases(self) -> int:
        """The rests of leases whose time is up go back (keys gone quiet); returns how many."""
        return self.leases.expire()

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        now = self.clock()
        ids = [(p.key_id, periods.period_id(p.period, now)) for p in principals]
        seen = [self.counters.settled(*i) for i in ids]
        if self.outage.active:
            local = await self.outage.spend(principals)
            return [x if x is not None else s for x, s in zip(local, seen, strict=True)]
        try:
            values = await self.counters.read_settled(ids)
        except REDIS_FAILURES as e:
            if is_refusal(e):
                self.counters.refused("a read of spend counters", e)
            else:
                self.outage.failed(e)
            return seen
        return [v if v is not None else s for v, s in zip(values, seen, strict=True)]

    async def drain(self) -> None:
        """Wait for the settles in flight (tests; shutdown)."""
        waiting = self._settling | self.leases.waiting()
        if waiting:  # their callbacks run before `wait` returns, spawning any retry
            await asyncio.wait(waiting, timeout=10)
        await self._tasks.drain()
        await self.outage.drain()

    async def start(self) -> None:
        store = self.counters.source.store
        if store is not None:
            await store.start()
        self._loops.spawn(self._sweeper())
        self._loops.spawn(every(self.config.snapshot_interval_s, self.snapshots.flush))
        self._loops.spawn(every(self.config.lease_s, self.leases.expire))

    async def close(self) -> None:
        await self._loops.cancel()
        await self.outage.stop()
        self.leases.give_back_all()
        await self.drain()
        await self.outage.close()
        await self.snapshots.flush()
        await self.counters.close()
        store = self.counters.source.store
        if store is not None:
            await store.close()
